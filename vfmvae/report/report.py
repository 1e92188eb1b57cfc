"""``write_report(run_dir)``: one self-contained HTML page describing every run under a folder.

The page lands at ``<out_dir>/report.html`` (``out_dir`` defaults to ``run_dir``). Per run (a folder of
TensorBoard event files, or of a CSVLogger ``metrics.csv``; :mod:`vfmvae.report.runs`): an overview, the loss
terms over training, the learning rate, skipped steps, the CKNNA / SE-CKNNA heat-map, the newest image grids,
a metrics table (+ JSON records) and the resolved config. What a run did not log is left out.
"""

from __future__ import annotations

import datetime
import logging
import os
import tempfile
from pathlib import Path

from vfmvae.report import sections
from vfmvae.report.html_page import esc, page, section
from vfmvae.report.records import read_record
from vfmvae.report.runs import Run, assign_records, find_runs, load_run, same_run

__all__ = ["REPORT_NAME", "NoRunsError", "write_report", "render_report"]

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"


class NoRunsError(FileNotFoundError):
    """The folder holds no run (no event file, no metrics.csv) or does not exist."""


def _anchor(index: int) -> str:
    return f"run-{index}"


def _run_html(run: Run, root: Path, index: int) -> str:
    name = "." if run.folder == root else str(run.folder.relative_to(root))
    parts = [
        sections.overview(run),
        sections.losses(run),
        sections.learning_rate(run),
        sections.guard(run),
        sections.probe(run),
        sections.grids(run),
        sections.metrics(run, root),
        sections.other_scalars(run),
        sections.config(run),
    ]
    return section(f"Run {name}", "\n".join(p for p in parts if p), level=2, anchor=_anchor(index))


def _drop_copies(runs: list[Run]) -> list[Run]:
    """A CSV run that repeats a TensorBoard run (two loggers, one training run) is shown once, as the latter."""
    kept = []
    for run in runs:
        original = None
        if run.kind == "csv":
            original = next((o for o in runs if o.kind == "tensorboard" and same_run(run, o)), None)
        if original is None:
            kept.append(run)
        else:
            original.copies.append(run.folder)
            original.records += [r for r in run.records if r.path not in {x.path for x in original.records}]
    return kept


def render_report(run_dir: str | os.PathLike) -> str:
    """The report of every run under ``run_dir`` as an HTML string (see :func:`write_report`)."""
    root = Path(run_dir).expanduser().resolve()
    if not root.is_dir():
        raise NoRunsError(f"run folder {root} does not exist (give the run's log folder or a root holding runs)")
    found = find_runs(root)
    if not found:
        raise NoRunsError(
            f"no run under {root}: no TensorBoard event file (events.out.tfevents.*) and no metrics.csv; "
            "give the folder a run logged to (e.g. <save_dir>/<name>/<version>) or a root above it"
        )
    owned, loose = assign_records(found, root)
    runs = _drop_copies([load_run(f, owned[f.folder]) for f in found])
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    body = [
        f"<h1>Run report: {esc(root.name or root)}</h1>",
        f"<p class='muted'>{esc(root)} &middot; {len(runs)} run(s) &middot; written {esc(stamp)} by "
        "<code>python -m vfmvae.report</code></p>",
    ]
    if len(runs) > 1:
        items = "".join(
            f'<li><a href="#{_anchor(i)}">{esc("." if r.folder == root else r.folder.relative_to(root))}</a></li>'
            for i, r in enumerate(runs)
        )
        body.append(f"<nav><ul>{items}</ul></nav>")
    records = [r for r in (read_record(p) for p in loose) if r is not None]
    if records:
        body.append(section("Records under the root", sections.records_html(records, root), level=2))
    for i, run in enumerate(runs):
        try:
            body.append(_run_html(run, root, i))
        except Exception as err:  # noqa: BLE001 - one odd run must not cost the report of the others
            log.exception("report of %s failed", run.folder)
            body.append(section(f"Run {run.folder}", f"<p>could not draw this run: {esc(err)}</p>", level=2))
    return page(f"Run report: {root.name}", "\n".join(body))


def write_report(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Write ``<out_dir or run_dir>/report.html`` for every run under ``run_dir``; returns its path.

    The page is self-contained (inline CSS, PNGs embedded as base64, no script): it opens offline from a
    ``file://`` URL. It is written atomically (temporary file, then rename), so a reader never sees half a page.
    Raises :class:`NoRunsError` (a one-line message naming the folder) when there is no run.
    """
    text = render_report(run_dir)
    out = Path(out_dir if out_dir is not None else run_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    path = out / REPORT_NAME
    fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".html", dir=out)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("wrote %s", path)
    return path.resolve()
