"""Scalar time series of one run: merging the pieces of a resumed run, the images-seen axis, smoothing.

A run's scalars arrive in pieces: one TensorBoard event file per process that wrote to the run folder (a
resumed run appends a new file), or rows of one ``metrics.csv`` that a resumed CSV logger appends to. The
merge rule is the one a resume implies: a piece that starts at step ``s`` replaces every earlier point at
step ``>= s`` (those points were logged after the checkpoint the run resumed from and are not part of the
run's history any more).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "Series",
    "merge_pieces",
    "ImageAxis",
    "image_axis",
    "IMAGE_COUNTERS",
    "smooth",
    "si_format",
]

# Tags that count training images, with the factor to images (docs/design.md, "Image counters and schedules").
# The first one a run logs becomes the x axis of its plots; a run without one is plotted against steps.
IMAGE_COUNTERS: dict[str, float] = {
    "train/global_kimg": 1000.0,
    "train/kimg": 1000.0,
    "train/global_nimg": 1.0,
    "train/nimg": 1.0,
    "train/images_seen": 1.0,
}


@dataclass
class Series:
    """One scalar tag: ``steps`` (N,) int64 ascending, ``values`` (N,) float64, ``wall_times`` (N,) seconds."""

    steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    values: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))
    wall_times: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))

    @classmethod
    def from_points(cls, points: Iterable[tuple[int, float, float]]) -> Series:
        """``[(step, value, wall_time), ...]`` in logging order -> a series (restarts inside are merged)."""
        points = list(points)
        if not points:
            return cls()
        steps, values, walls = (np.asarray(c) for c in zip(*points))
        if np.all(np.diff(steps) > 0):  # the usual case, without a Python loop over long runs
            return cls(steps.astype(np.int64), values.astype(np.float64), walls.astype(np.float64))
        out: list[tuple[int, float, float]] = []
        for step, value, wall in points:
            if out and step <= out[-1][0]:  # the writer went back: a restart inside one piece
                out = [p for p in out if p[0] < step]
            out.append((int(step), float(value), float(wall)))
        if not out:
            return cls()
        steps, values, walls = zip(*out)
        return cls(np.asarray(steps, np.int64), np.asarray(values, np.float64), np.asarray(walls, np.float64))

    def __len__(self) -> int:
        return int(self.steps.size)

    @property
    def last(self) -> tuple[int, float]:
        """``(step, value)`` of the newest point."""
        return int(self.steps[-1]), float(self.values[-1])

    def finite(self) -> Series:
        """The points whose value is finite (NaN / inf are logged on guarded steps)."""
        keep = np.isfinite(self.values)
        return Series(self.steps[keep], self.values[keep], self.wall_times[keep])


def merge_pieces(pieces: Iterable[Mapping[str, Series]]) -> dict[str, Series]:
    """Merge per-piece ``{tag: Series}`` given in writing order (oldest first) with the resume rule above."""
    merged: dict[str, Series] = {}
    for piece in pieces:
        for tag, series in piece.items():
            if not len(series):
                continue
            old = merged.get(tag)
            if old is None:
                merged[tag] = series
                continue
            keep = old.steps < series.steps[0]
            merged[tag] = Series(
                np.concatenate([old.steps[keep], series.steps]),
                np.concatenate([old.values[keep], series.values]),
                np.concatenate([old.wall_times[keep], series.wall_times]),
            )
    return dict(sorted(merged.items()))


@dataclass(frozen=True)
class ImageAxis:
    """The x axis of a run's plots: images seen (from a logged counter) or optimiser steps."""

    label: str
    counter: str | None = None
    counter_steps: np.ndarray | None = None
    counter_images: np.ndarray | None = None

    def __call__(self, steps: np.ndarray) -> np.ndarray:
        """Steps (N,) -> x values (N,): the counter interpolated, extrapolated linearly outside its range."""
        steps = np.asarray(steps, dtype=np.float64)
        if self.counter is None:
            return steps
        xs, ys = self.counter_steps.astype(np.float64), self.counter_images
        if xs.size == 1:
            rate = ys[0] / max(xs[0], 1.0)
            return np.maximum(ys[0] + rate * (steps - xs[0]), 0.0)
        rate = (ys[-1] - ys[0]) / max(xs[-1] - xs[0], 1.0)
        out = np.interp(steps, xs, ys)
        out = np.where(steps > xs[-1], ys[-1] + rate * (steps - xs[-1]), out)
        out = np.where(steps < xs[0], ys[0] - rate * (xs[0] - steps), out)
        return np.maximum(out, 0.0)

    def describe(self, step: int) -> str:
        """``"step 1200"`` or ``"step 1200, 307.2k images"`` for captions."""
        if self.counter is None:
            return f"step {step}"
        return f"step {step}, {si_format(float(self(np.array([step]))[0]))} images"


def image_axis(scalars: Mapping[str, Series]) -> ImageAxis:
    """The images-seen axis when the run logs one of :data:`IMAGE_COUNTERS` (non-decreasing), else steps."""
    for tag, factor in IMAGE_COUNTERS.items():
        series = scalars.get(tag)
        if series is None or not len(series):
            continue
        series = series.finite()
        if len(series) and np.all(np.diff(series.values) >= 0):
            return ImageAxis("images seen", tag, series.steps, series.values * factor)
    return ImageAxis("step")


def smooth(values: np.ndarray, weight: float | None = None) -> np.ndarray:
    """TensorBoard's debiased exponential moving average; ``weight`` defaults to 0.6 (<= 100 points) .. 0.95.

    NaN / inf points are skipped (they keep the previous average) so one guarded step does not blank the curve.
    """
    values = np.asarray(values, dtype=np.float64)
    if weight is None:
        weight = float(np.clip(0.6 + 0.35 * np.log10(max(values.size, 1) / 100.0), 0.6, 0.95))
    out = [math.nan] * values.size
    last, correction = 0.0, 1.0  # correction = weight ** (finite points so far)
    for i, v in enumerate(values.tolist()):  # plain Python floats: ~1 s for a million points
        if math.isfinite(v):
            last = last * weight + (1.0 - weight) * v
            correction *= weight
        if correction < 1.0:
            out[i] = last / (1.0 - correction)
    return np.asarray(out, dtype=np.float64)


def si_format(x: float) -> str:
    """``307200 -> "307.2k"``: counts of images in captions and axis labels."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.4g}{unit}"
    return f"{x:.4g}"
