"""The sections of one run's part of the report, each an HTML string or ``""`` when the run has nothing for it.

Tags follow the project's TensorBoard naming rule (``callbacks/tb_layout.py``): ``loss/*`` loss terms,
``train/*`` bookkeeping (``train/lr*`` learning rates, ``train/skipped_*`` guard counts), ``guard/*`` skip
counters, ``metric/*`` evaluation, ``probe/cknna/*`` / ``probe/se_cknna/*`` representation probes
(docs/design.md, "SE-CKNNA"), ``grid/*`` image grids, ``ema/*`` EMA bookkeeping.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from vfmvae.report.html_page import details, esc, img, section, table
from vfmvae.report.plots import curves_chart, curves_grid, heatmap_png
from vfmvae.report.records import Record
from vfmvae.report.runs import Run
from vfmvae.report.scalars import IMAGE_COUNTERS, si_format

__all__ = [
    "overview",
    "losses",
    "learning_rate",
    "guard",
    "probe",
    "grids",
    "metrics",
    "other_scalars",
    "config",
    "records_html",
    "probe_matrix",
]

_AGGREGATES = ("mean_over_blocks", "mean_over_conditions")
_PER_FIGURE = 24
_HEATMAP_COLUMNS = 40
_MAX_CONFIG_CHARS = 200_000


def _num(value: float) -> str:
    return f"{value:.6g}"


def _duration(seconds: float) -> str:
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {sec:02d}s" if hours else f"{minutes}m {sec:02d}s"


def _series_table(run: Run, tags: list[str]) -> str:
    rows = []
    for tag in tags:
        s = run.scalars[tag]
        finite = s.finite()
        rows.append(
            [
                tag,
                len(s),
                f"{s.steps[0]} - {s.steps[-1]}",
                _num(s.values[0]),
                _num(s.values[-1]),
                _num(finite.values.min()) if len(finite) else "-",
                len(s) - len(finite),
            ]
        )
    return table(
        ["tag", "points", "steps", "first", "last", "min", "non-finite"],
        rows,
        [False, True, False, True, True, True, True],
    )


def _grids_by_group(run: Run, tags: list[str], depth: int = 2, smoothed: bool = True) -> str:
    """Small-multiple figures, one per tag group (``loss/G/*``, ``loss/D/*``, ``loss/*``), 24 tags a figure."""
    groups: dict[str, list[str]] = {}
    for tag in tags:
        parts = tag.split("/")
        groups.setdefault("/".join(parts[:depth]) if len(parts) > depth else parts[0], []).append(tag)
    out = []
    for group, members in sorted(groups.items(), key=lambda kv: (kv[0].count("/"), kv[0])):
        for i in range(0, len(members), _PER_FIGURE):
            chunk = members[i : i + _PER_FIGURE]
            png = curves_grid(run.axis, {t: run.scalars[t] for t in chunk}, title=f"{group}/*", smoothed=smoothed)
            out.append(img(png, f"{group} curves"))
    return "\n".join(out)


def overview(run: Run) -> str:
    """Where the run is, what logged it, how far it went."""
    rows = [["folder", str(run.folder)]]
    if run.kind == "tensorboard":
        rows.append(["logged by", f"TensorBoard, {len(run.sources)} event file(s)"])
    else:
        rows.append(["logged by", f"CSVLogger ({run.sources[0].name}; no images)"])
    for copy in run.copies:
        rows.append(["also logged to", str(copy)])
    if run.last_step is not None:
        rows.append(["last step", run.last_step])
        if run.axis.counter:
            rows.append(["images seen", f"{run.axis.describe(run.last_step)} (from {run.axis.counter})"])
    if run.duration_s is not None:
        rows.append(["wall time (first to last logged point)", _duration(run.duration_s)])
    rows.append(["x axis of the curves", run.axis.label + (f" ({run.axis.counter})" if run.axis.counter else "")])
    if run.checkpoints:
        names = [f"{p.relative_to(run.folder)} ({p.stat().st_size / 2**20:.1f} MiB)" for p in run.checkpoints[:12]]
        more = len(run.checkpoints) - len(names)
        rows.append(["checkpoints", ", ".join(names) + (f", ... {more} more" if more > 0 else "")])
    return table(None, rows)


def losses(run: Run) -> str:
    tags = run.tags("loss/")
    if not tags:
        return ""
    return section("Losses", _series_table(run, tags) + _grids_by_group(run, tags))


def learning_rate(run: Run) -> str:
    tags = run.tags("train/lr")
    if not tags:
        return ""
    png = curves_chart(run.axis, {t: run.scalars[t] for t in tags}, "learning rate", logy=False)
    last = ", ".join(f"{t} = {_num(run.scalars[t].last[1])}" for t in tags)
    return section("Learning rate", f"<p>last: {esc(last)}</p>" + img(png, "learning rate"))


def guard(run: Run) -> str:
    """Skipped optimiser steps (non-finite losses or gradients) from ``guard/*`` and ``train/skipped_*``."""
    tags = run.tags("guard/") + run.tags("train/skipped")
    if not tags:
        return ""
    lines = []
    for tag in tags:
        if tag.endswith("num_skipped") or tag.startswith("train/skipped"):
            lines.append(f"{tag}: {_num(run.scalars[tag].last[1])} skipped steps in total")
    if "guard/skipped" in run.scalars:
        s = run.scalars["guard/skipped"]
        steps = s.steps[s.values >= 0.5]
        shown = ", ".join(str(int(x)) for x in steps[:30]) + (" ..." if steps.size > 30 else "")
        lines.append(f"steps logged as skipped: {steps.size}" + (f" (steps {shown})" if steps.size else ""))
    body = "<ul>" + "".join(f"<li>{esc(line)}</li>" for line in lines) + "</ul>"
    if any(np.nanmax(run.scalars[t].values, initial=0.0) > 0 for t in tags):
        body += _grids_by_group(
            run, tags, depth=1, smoothed=False
        )  # flat zero curves say nothing: drawn only after a skip
    return section("Guard: skipped steps", body)


def _row_key(name: str) -> tuple[int, int, str]:
    if name in ("embedder", "clean"):
        return (0, 0, name)
    match = re.fullmatch(r"block_(\d+)", name)
    if match:
        return (1, int(match.group(1)), name)
    if name == "final_layer":
        return (2, 0, name)
    return (3, 0, name)


def probe_matrix(run: Run, group: str) -> tuple[np.ndarray, list[str], list[int]] | None:
    """``(values (rows, steps), row names, steps)`` of ``probe/<group>/*`` (aggregates and projectors left out,
    as the probe callback's own heat-map does); at most the newest 40 probe steps, evenly thinned; None if none."""
    prefix = f"probe/{group}/"
    names = sorted(
        (t[len(prefix) :] for t in run.tags(prefix) if "/" not in t[len(prefix) :]),
        key=_row_key,
    )
    names = [n for n in names if n not in _AGGREGATES and not n.startswith("projector_")]
    if not names:
        return None
    steps = np.unique(np.concatenate([run.scalars[prefix + n].steps for n in names]))
    if steps.size > _HEATMAP_COLUMNS:
        steps = steps[np.unique(np.linspace(0, steps.size - 1, _HEATMAP_COLUMNS).round().astype(int))]
    values = np.full((len(names), steps.size), np.nan)
    for r, name in enumerate(names):
        s = run.scalars[prefix + name]
        lookup = dict(zip(s.steps.tolist(), s.values.tolist()))
        values[r] = [lookup.get(int(step), np.nan) for step in steps]
    return values, names, [int(s) for s in steps]


def probe(run: Run) -> str:
    """CKNNA / SE-CKNNA heat-maps over training drawn from the scalars; the logged heat-map image otherwise."""
    parts = []
    for group, what in (("cknna", "CKNNA(DiT block, VFM)"), ("se_cknna", "SE-CKNNA(latent, VFM) per condition")):
        matrix = probe_matrix(run, group)
        if matrix is not None:
            values, rows, steps = matrix
            if run.axis.counter:
                labels, xlabel = [si_format(x) for x in run.axis(np.asarray(steps))], "images seen"
            else:
                labels, xlabel = [str(s) for s in steps], "step"
            png = heatmap_png(
                values, rows, labels, title=f"{what} over training", xlabel=xlabel, colorbar_label=what.split("(")[0]
            )
            parts.append(img(png, f"{group} heat-map", f"from the probe/{group}/* scalars ({len(steps)} probes)"))
        elif f"probe/{group}_heatmap" in run.images:
            logged = run.images[f"probe/{group}_heatmap"]
            caption = f"probe/{group}_heatmap as logged, {run.axis.describe(logged.step)}"
            parts.append(img(logged.png, f"{group} heat-map", caption))
    aggregates = {
        t: run.scalars[t]
        for t in run.tags("probe/")
        if t.rsplit("/", 1)[-1] in _AGGREGATES or t.rsplit("/", 1)[-1].startswith("projector_")
    }
    if aggregates:
        parts.append(img(curves_chart(run.axis, aggregates, "CKNNA"), "probe aggregates"))
    tags = run.tags("probe/")
    if tags:
        rows = [[t, run.scalars[t].last[0], _num(run.scalars[t].last[1])] for t in tags]
        parts.append(details(f"latest value of the {len(tags)} probe scalars", table(["tag", "step", "value"], rows)))
    if not parts:
        return ""
    return section("Representation probe (CKNNA / SE-CKNNA)", "\n".join(parts))


def grids(run: Run) -> str:
    """The newest image of every ``grid/*`` tag (samples, reconstructions)."""
    tags = [t for t in run.images if t.startswith("grid/")]
    if not tags:
        return ""
    figures = []
    for tag in tags:
        image = run.images[tag]
        caption = f"{tag}: newest, {run.axis.describe(image.step)}, {image.width}x{image.height} px"
        figures.append(img(image.png, tag, caption, pixels=image.width < 512))
    return section("Image grids (newest)", "\n".join(figures))


def records_html(records: list[Record], root: Path) -> str:
    """One table per JSON record (path relative to ``root``)."""
    out = []
    for record in records:
        name = record.path.relative_to(root) if record.path.is_relative_to(root) else record.path
        note = f"<p class='muted'>{record.truncated} more rows not shown</p>" if record.truncated else ""
        out.append(f"<h4>{esc(name)}</h4>" + table(["key", "value"], record.rows, [False, True]) + note)
    return "\n".join(out)


def metrics(run: Run, root: Path) -> str:
    """Latest value of every ``metric/*`` scalar, their curves (tags with >= 2 points), the JSON records."""
    tags = run.tags("metric/")
    parts = []
    if tags:
        rows = [[t, run.scalars[t].last[0], _num(run.scalars[t].last[1]), len(run.scalars[t])] for t in tags]
        parts.append(table(["metric", "step", "latest", "points"], rows, [False, True, True, True]))
        curves = [t for t in tags if len(run.scalars[t]) >= 2]
        if curves:
            parts.append(_grids_by_group(run, curves, depth=1, smoothed=False))
    if run.records:
        parts.append("<p>JSON records in the run folder:</p>" + records_html(run.records, root))
    return section("Metrics", "\n".join(parts)) if parts else ""


def other_scalars(run: Run) -> str:
    """``train/*`` (but learning rates and skip counts), ``ema/*`` and any tag outside the naming rule."""
    shown = ("loss/", "metric/", "probe/", "guard/", "train/lr", "train/skipped")
    tags = sorted(
        t
        for t in run.scalars
        if not t.startswith(shown) and t not in ("epoch", "hp_metric") and t not in IMAGE_COUNTERS
    )
    if not tags:
        return ""
    figures = [
        img(curves_grid(run.axis, {t: run.scalars[t] for t in tags[i : i + _PER_FIGURE]}), "other training scalars")
        for i in range(0, min(len(tags), 2 * _PER_FIGURE), _PER_FIGURE)
    ]
    body = _series_table(run, tags) + "\n".join(figures)
    return section("Other training scalars", details(f"{len(tags)} tags: table and curves", body))


def config(run: Run) -> str:
    """The resolved config LightningCLI saved (``config.yaml``), else the logger's ``hparams.yaml``."""
    if run.config_path is None:
        return ""
    text = run.config_path.read_text(errors="replace")
    if len(text) > _MAX_CONFIG_CHARS:
        text = text[:_MAX_CONFIG_CHARS] + f"\n... ({len(text) - _MAX_CONFIG_CHARS} more characters)"
    body = f"<p class='muted'>{esc(run.config_path)}</p><pre>{esc(text)}</pre>"
    return section(f"Config ({run.config_path.name})", details("show the config", body, open_=True))
