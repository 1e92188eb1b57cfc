"""TensorBoard layout shared by the tokenizer and diffusion runs: tag naming rule, custom-scalar groups, run names.

Naming rule (every tag a module or callback writes starts with one of these groups):

| group      | what                                                            | examples                                   |
|------------|-----------------------------------------------------------------|--------------------------------------------|
| `loss/`    | training loss terms (named as the loss dicts name them)          | `loss/total`, `loss/proj`, `loss/G/lpips`  |
| `metric/`  | evaluation metrics (validation / periodic generative eval)      | `metric/rfid`, `metric/psnr`, `metric/fid` |
| `probe/`   | representation probes (scalars and their heat-map images)        | `probe/cknna/block_3`, `probe/se_cknna/clean`, `probe/seconds`, `probe/cknna_heatmap` |
| `grid/`    | image grids                                                     | `grid/reconstruction`, `grid/samples`      |
| `train/`   | optimisation bookkeeping (lr, grad norms, counters, EMA, guard) | `train/lr`, `train/grad_norm_G`            |

`add_custom_scalars` groups the scalar groups into the CUSTOM SCALARS tab (one chart per regex list); the
IMAGES tab groups by the tag prefix by itself. `ema/*` and `guard/*` (older tags) are shown under `train`.

Run names: one TensorBoard run per training run *and stage*: ``<save_dir>/<run>/<version>`` with
``version = run_version(stage, stage_name)`` = ``"stage{N}_{name}"`` for the tokenizer (``stage1_weak_alignment``)
and the plain name (e.g. ``"reg"``) when there is no stage. In YAML:
``trainer.logger: {class_path: lightning.pytorch.loggers.TensorBoardLogger, init_args: {save_dir: outputs/tb,
name: <run>, version: stage1_weak_alignment}}``, or build it with :func:`tensorboard_logger`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

__all__ = [
    "TAG_GROUPS",
    "tag",
    "invalid_tags",
    "custom_scalar_layout",
    "apply_layout",
    "TensorBoardLayoutCallback",
    "run_version",
    "tensorboard_logger",
    "render_heatmap",
    "log_scalars",
    "log_image",
]

TAG_GROUPS = {
    "loss": "training loss terms",
    "metric": "evaluation metrics",
    "probe": "representation probes (CKNNA / SE-CKNNA)",
    "grid": "image grids",
    "train": "optimisation bookkeeping",
}
_LEGACY_TRAIN = ("ema", "guard")  # tags written before the rule; shown under `train`


def tag(group: str, *parts: str) -> str:
    """``tag("probe", "cknna", "block_3") -> "probe/cknna/block_3"``; unknown groups are an error."""
    if group not in TAG_GROUPS:
        raise ValueError(f"unknown TensorBoard tag group {group!r}; use one of {sorted(TAG_GROUPS)}")
    if not parts or any(not str(p).strip("/") for p in parts):
        raise ValueError(f"tag({group!r}, ...) needs non-empty name parts, got {parts}")
    return "/".join([group, *(p.strip("/") for p in parts)])


def invalid_tags(tags: Iterable[str]) -> list[str]:
    """Tags that break the naming rule (for module tests: ``assert not invalid_tags(logged)``)."""
    allowed = tuple(f"{g}/" for g in (*TAG_GROUPS, *_LEGACY_TRAIN))
    return sorted(t for t in tags if not t.startswith(allowed) or t.endswith("/"))


def custom_scalar_layout() -> dict[str, dict[str, list[Any]]]:
    """``{category: {chart title: ["Multiline", [regex, ...]]}}`` for ``SummaryWriter.add_custom_scalars``."""
    return {
        "loss": {
            "total": ["Multiline", [r"^loss/total$", r"^loss/[GD]/total$"]],
            "terms": ["Multiline", [r"^loss/(?![GD]/)(?!total$).+"]],
            "generator terms": ["Multiline", [r"^loss/G/.+"]],
            "discriminator terms": ["Multiline", [r"^loss/D/.+"]],
        },
        "metric": {
            "generation (FID, sFID, IS, P/R)": ["Multiline", [r"^metric/(fid|sfid|inception_score|precision|recall)"]],
            "reconstruction": ["Multiline", [r"^metric/(rfid|psnr|ssim|lpips|ris)"]],
            "all": ["Multiline", [r"^metric/.+"]],
        },
        "probe": {
            "CKNNA per block (DiT vs VFM)": ["Multiline", [r"^probe/cknna/block_\d+$"]],
            "CKNNA embedder / final layer / projector": [
                "Multiline",
                [r"^probe/cknna/(embedder|final_layer|projector_\d+|mean_over_blocks)$"],
            ],
            "SE-CKNNA per condition (latent vs VFM)": ["Multiline", [r"^probe/se_cknna/.+"]],
            "probe cost (seconds)": ["Multiline", [r"^probe/seconds$"]],
        },
        "train": {
            "learning rate": ["Multiline", [r"^train/lr"]],
            "gradient norms": ["Multiline", [r"^train/grad_norm"]],
            "EMA / guard / counters": ["Multiline", [r"^(ema|guard)/.+", r"^train/(?!lr|grad_norm).+"]],
        },
    }


def _tensorboard_loggers(trainer: Trainer) -> list[TensorBoardLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]


def apply_layout(trainer: Trainer) -> int:
    """Write the custom-scalar layout into every TensorBoard logger of the trainer (rank 0); returns how many."""
    if not trainer.is_global_zero:
        return 0
    loggers = _tensorboard_loggers(trainer)
    for lg in loggers:
        lg.experiment.add_custom_scalars(custom_scalar_layout())
    return len(loggers)


class TensorBoardLayoutCallback(Callback):
    """Applies :func:`custom_scalar_layout` at the start of fit (add it to the run's callbacks)."""

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        apply_layout(trainer)


def run_version(stage: int | None = None, name: str | None = None) -> str:
    """``run_version(1, "weak_alignment") -> "stage1_weak_alignment"``; ``run_version(None, "reg") -> "reg"``."""
    if stage is None:
        if not name:
            raise ValueError("run_version needs a stage number or a name")
        return _safe(name)
    if int(stage) < 0:
        raise ValueError(f"stage must be >= 0, got {stage}")
    return f"stage{int(stage)}" + (f"_{_safe(name)}" if name else "")


def _safe(name: str) -> str:
    out = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_")
    if not out:
        raise ValueError(f"run name {name!r} has no usable characters")
    return out


def tensorboard_logger(
    save_dir: str, run: str, stage: int | None = None, stage_name: str | None = None, **kwargs: Any
) -> TensorBoardLogger:
    """``TensorBoardLogger`` writing to ``<save_dir>/<run>/<run_version(stage, stage_name)>``."""
    return TensorBoardLogger(save_dir, name=_safe(run), version=run_version(stage, stage_name), **kwargs)


def render_heatmap(
    values: np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[Any],
    title: str = "",
    colorbar_label: str = "CKNNA",
    max_row_labels: int = 32,
) -> np.ndarray:
    """A ``(rows, columns)`` matrix as a matplotlib heat-map -> ``uint8 (H, W, 3)`` (rows top to bottom).

    Uses a figure-local Agg canvas (no pyplot global state, safe in a training process). NaNs show as blank.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape != (len(row_labels), len(col_labels)) or values.size == 0:
        raise ValueError(
            f"heat-map values {values.shape} do not match {len(row_labels)} rows x "
            f"{len(col_labels)} columns (and must not be empty)"
        )
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows, cols = values.shape
    fig = Figure(figsize=(min(3.0 + 0.35 * cols, 16.0), min(1.5 + 0.22 * rows, 12.0)), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", interpolation="nearest", cmap="viridis")
    fig.colorbar(image, ax=ax, label=colorbar_label)
    row_step = max(1, -(-rows // max_row_labels))
    ax.set_yticks(range(0, rows, row_step), [str(r) for r in row_labels][::row_step], fontsize=7)
    col_step = max(1, -(-cols // 12))
    ax.set_xticks(range(0, cols, col_step), [str(c) for c in col_labels][::col_step], fontsize=7, rotation=45)
    ax.set_xlabel("step")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def log_scalars(trainer: Trainer, metrics: dict[str, float], step: int) -> None:
    """Write scalars to every logger at ``step`` now (not subject to ``log_every_n_steps``); rank 0 only."""
    bad = invalid_tags(metrics)
    if bad:
        raise ValueError(f"tags {bad} break the TensorBoard naming rule (groups {sorted(TAG_GROUPS)})")
    if not trainer.is_global_zero:
        return
    for lg in trainer.loggers:
        lg.log_metrics(dict(metrics), step=step)


def log_image(trainer: Trainer, name: str, image_hwc: np.ndarray, step: int) -> bool:
    """``add_image`` an ``uint8 (H, W, 3)`` image on every TensorBoard logger (rank 0); False if none took it."""
    if invalid_tags([name]):
        raise ValueError(f"image tag {name!r} breaks the TensorBoard naming rule (groups {sorted(TAG_GROUPS)})")
    if not trainer.is_global_zero:
        return False
    written = False
    for lg in trainer.loggers:
        experiment = getattr(lg, "experiment", None)
        if experiment is not None and hasattr(experiment, "add_image"):
            experiment.add_image(name, image_hwc, global_step=step, dataformats="HWC")
            written = True
    return written
