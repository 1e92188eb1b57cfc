"""The report's figures as PNG bytes: curves over training (small multiples or one chart) and heat-maps.

Figures use a figure-local Agg canvas (``matplotlib.figure.Figure`` + ``FigureCanvasAgg``): no pyplot global
state and no display, so the report runs on a headless machine and inside a training process.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np

from vfmvae.report.scalars import ImageAxis, Series, smooth

__all__ = ["curves_grid", "curves_chart", "heatmap_png", "figure_png", "envelope"]

_DPI = 90
_MAX_POINTS = 4000  # more points than pixels: drawn as a band


def figure_png(fig) -> bytes:
    """Render a ``matplotlib.figure.Figure`` to PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=_DPI, layout="constrained")


def _positive_wide(values: np.ndarray) -> bool:
    """A log y axis helps when every value is positive and they span more than two decades."""
    finite = values[np.isfinite(values)]
    return finite.size > 1 and bool(np.all(finite > 0)) and finite.max() / finite.min() > 100.0


def envelope(values: np.ndarray, buckets: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(edges (B+1,), min (B,), max (B,))`` of ``values`` cut into ``B`` consecutive buckets (NaN ignored)."""
    edges = np.unique(np.linspace(0, len(values), buckets + 1).astype(int))
    with np.errstate(all="ignore"):
        return edges, np.fmin.reduceat(values, edges[:-1]), np.fmax.reduceat(values, edges[:-1])


def _plot_series(
    ax, axis: ImageAxis, series: Series, label: str | None = None, color=None, smoothed: bool = True
) -> None:
    if axis.counter is None:  # steps are whole numbers: no "0.5" ticks on a short run
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    x, y = axis(series.steps), series.values
    if len(series) == 1:
        ax.plot(x, y, "o", label=label, color=color, markersize=4)
        return
    if len(series) > _MAX_POINTS:  # a long run: the raw curve as its min-max envelope per bucket (spikes stay)
        edges, low, high = envelope(y, _MAX_POINTS // 2)
        xb = x[edges[:-1]]
        band = ax.fill_between(xb, low, high, alpha=0.3, linewidth=0.6, color=color)  # edges: 1-bucket spikes show
        line = smooth(y) if smoothed else y
        ax.plot(
            xb,
            line[np.minimum(edges[1:] - 1, len(series) - 1)],
            linewidth=1.2,
            label=label,
            color=band.get_facecolor()[0][:3],
        )
    elif smoothed and len(series) >= 20:
        (raw,) = ax.plot(x, y, alpha=0.3, linewidth=0.8, color=color)
        ax.plot(x, smooth(y), linewidth=1.4, color=raw.get_color(), label=label)
    else:
        ax.plot(x, y, marker="." if len(series) < 200 else None, linewidth=1.2, label=label, color=color, markersize=4)


def curves_grid(
    axis: ImageAxis,
    series: Mapping[str, Series],
    ncols: int = 3,
    title: str | None = None,
    smoothed: bool = True,
) -> bytes:
    """One small chart per tag (each with its own y scale); with ``smoothed`` (noisy quantities such as losses)
    and >= 20 points the raw curve is faint and the smoothed one solid; counters are drawn as they are."""
    tags = list(series)
    if not tags:
        raise ValueError("curves_grid needs at least one series")
    ncols = min(ncols, len(tags))
    nrows = -(-len(tags) // ncols)
    fig = _figure(4.2 * ncols, 2.6 * nrows + (0.3 if title else 0.0))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, tag in zip(axes, tags):
        s = series[tag]
        _plot_series(ax, axis, s, smoothed=smoothed)
        ax.set_title(tag, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if _positive_wide(s.values):
            ax.set_yscale("log")
    for ax in axes[len(tags) :]:
        ax.set_visible(False)
    for ax in axes[max(0, len(tags) - ncols) : len(tags)]:
        ax.set_xlabel(axis.label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return figure_png(fig)


def curves_chart(axis: ImageAxis, series: Mapping[str, Series], ylabel: str, logy: bool | None = None) -> bytes:
    """All tags as lines of one chart, unsmoothed (quantities on one scale: learning rates, probe aggregates)."""
    if not series:
        raise ValueError("curves_chart needs at least one series")
    fig = _figure(7.0, 3.0)
    ax = fig.add_subplot(1, 1, 1)
    for tag, s in series.items():
        _plot_series(ax, axis, s, label=tag, smoothed=False)
    values = np.concatenate([s.values for s in series.values()])
    if logy or (logy is None and _positive_wide(values)):
        ax.set_yscale("log")
    ax.set_xlabel(axis.label, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return figure_png(fig)


def heatmap_png(
    values: np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str = "",
    xlabel: str = "step",
    colorbar_label: str = "CKNNA",
) -> bytes:
    """A ``(rows, columns)`` matrix (rows top to bottom, NaN blank) as an annotated heat-map PNG."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape != (len(row_labels), len(col_labels)) or values.size == 0:
        raise ValueError(
            f"heat-map values {values.shape} do not match {len(row_labels)} rows x {len(col_labels)} columns"
        )
    rows, cols = values.shape
    fig = _figure(min(3.5 + 0.4 * cols, 16.0), min(1.6 + 0.25 * rows, 12.0))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", interpolation="nearest", cmap="viridis")
    fig.colorbar(image, ax=ax, label=colorbar_label)
    row_step = max(1, -(-rows // 32))
    ax.set_yticks(range(0, rows, row_step), list(row_labels)[::row_step], fontsize=7)
    col_step = max(1, -(-cols // 14))
    ax.set_xticks(range(0, cols, col_step), list(col_labels)[::col_step], fontsize=7, rotation=45)
    ax.set_xlabel(xlabel, fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    if rows * cols <= 120:  # small maps get their numbers written in (readable in a printed report)
        for (r, c), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(
                    c, r, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if image.norm(v) < 0.5 else "k"
                )
    return figure_png(fig)
