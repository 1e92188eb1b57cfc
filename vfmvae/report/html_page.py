"""HTML building blocks of the report: escaped text, tables, embedded PNGs, and the page around them.

The page is one file with inline CSS and every image embedded as a ``data:image/png;base64`` URI: no
script, no stylesheet or font from the network, so it opens offline from a ``file://`` URL and can be
attached to a report or an e-mail as it is.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence

__all__ = ["esc", "img", "table", "section", "details", "page"]

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 1em 2em; color: #1d1d1f; }
h1 { font-size: 1.6em; border-bottom: 2px solid #ddd; padding-bottom: .2em; }
h2 { font-size: 1.3em; margin-top: 2em; border-bottom: 1px solid #ddd; }
h3 { font-size: 1.05em; margin-top: 1.4em; }
table { border-collapse: collapse; margin: .5em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 2px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f7f7f9; border: 1px solid #e3e3e8; padding: .6em; overflow-x: auto; font-size: 12px; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
img.pixels { image-rendering: pixelated; min-width: 256px; }
figure { margin: .6em 0; } figcaption { color: #555; font-size: 12px; }
.muted { color: #666; } nav ul { columns: 2; }
"""


def esc(text: object) -> str:
    """HTML-escaped ``str(text)``."""
    return html.escape(str(text), quote=True)


def img(png: bytes, alt: str, caption: str | None = None, pixels: bool = False) -> str:
    """A ``<figure>`` with the PNG embedded as base64; ``pixels`` keeps small grids sharp when scaled up."""
    data = base64.b64encode(png).decode("ascii")
    cls = ' class="pixels"' if pixels else ""
    out = f'<figure><img{cls} alt="{esc(alt)}" src="data:image/png;base64,{data}">'
    if caption:
        out += f"<figcaption>{esc(caption)}</figcaption>"
    return out + "</figure>"


def _is_number(cell: object) -> bool:
    try:
        float(str(cell))
    except ValueError:
        return False
    return True


def table(header: Sequence[str] | None, rows: Iterable[Sequence[object]], numeric: Sequence[bool] | None = None) -> str:
    """A ``<table>`` (no header row when ``header`` is None); cells are escaped; ``numeric[i]`` right-aligns
    the cells of column ``i`` that hold a number."""
    numeric = list(numeric or [])
    head = "" if header is None else "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead>"
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{esc(c)}</td>'
            if i < len(numeric) and numeric[i] and _is_number(c)
            else f"<td>{esc(c)}</td>"
            for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table>{head}<tbody>{''.join(body)}</tbody></table>"


def section(title: str, body: str, level: int = 3, anchor: str | None = None) -> str:
    """A heading plus its (already HTML) body."""
    ident = f' id="{esc(anchor)}"' if anchor else ""
    return f"<h{level}{ident}>{esc(title)}</h{level}>\n{body}\n"


def details(summary: str, body_html: str, open_: bool = False) -> str:
    """A collapsible block (HTML ``<details>``, no script needed)."""
    return f"<details{' open' if open_ else ''}><summary>{esc(summary)}</summary>{body_html}</details>"


def page(title: str, body: str) -> str:
    """The whole document."""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>\n"
        f"<body>\n{body}\n</body></html>\n"
    )
