"""Representation dynamics: CKNNA of every diffusion block with a reference VFM, over a list of training
checkpoints (paper: representation dynamics during diffusion training; docs/analyses.md, "Representation
dynamics").

For each checkpoint the SE-CKNNA diffusion-block protocol (docs/design.md, "SE-CKNNA") runs unchanged:
clean images encoded by the tokenizer (posterior samples), normalised with the diffusion run's latent
statistics, noised to ``noise_fraction`` (paper: t = 0.5) on the linear path, null condition, each network in
its own time convention (`vfmvae.metrics.se_probe.dit_block_features`), token-mean features of the
embedder, every block, the final layer (and REG's projector), then ``CKNNA(k=10)`` with the reference VFM's
features of the same clean images. The noise draw uses the same seed for every checkpoint, so two
checkpoints differ only by their weights.

Output rows ``{"checkpoint", "step", "feature", "cknna"}``; :func:`dynamics_matrix` arranges them as the
paper's figure (features top to bottom, checkpoints left to right) and :func:`write_dynamics` writes
``dynamics.csv``, ``dynamics.json`` and the heat map ``dynamics.png``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cknna import cknna
from .se_probe import dit_block_features

__all__ = [
    "block_cknna",
    "checkpoint_label",
    "dynamics_matrix",
    "dynamics_rows",
    "dynamics_summary",
    "write_dynamics",
]


def block_cknna(
    net: Any,
    latents: torch.Tensor,
    reference: torch.Tensor,
    *,
    class_tokens: torch.Tensor | None = None,
    noise_fraction: float = 0.5,
    topk: int = 10,
    batch_size: int = 32,
    seed: int = 42,
) -> dict[str, float]:
    """``{feature: CKNNA}`` of one diffusion network: normalised latents ``(N, C, h, w)`` against reference
    features ``(N, D)`` of the same images (same order)."""
    if len(latents) != len(reference):
        raise ValueError(f"{len(latents)} latents but {len(reference)} reference features: they must pair up")
    if len(latents) <= topk:
        raise ValueError(f"CKNNA with topk={topk} needs more than {topk} images, got {len(latents)}")
    device = next(net.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    feats = dit_block_features(
        net,
        latents.to(device),
        noise_fraction=noise_fraction,
        class_tokens=None if class_tokens is None else class_tokens.to(device),
        batch_size=batch_size,
        generator=gen,
    )
    return {name: cknna(value, reference, topk=topk) for name, value in feats.items()}


def checkpoint_label(path: str | Path, step: int | None) -> str:
    """Column label of a checkpoint: its training step when known, else its file name."""
    return f"step {step}" if step is not None else Path(path).name


def dynamics_rows(results: Sequence[tuple[str, int | None, Mapping[str, float]]]) -> list[dict[str, Any]]:
    """``[(checkpoint, step, {feature: cknna})]`` -> flat rows in checkpoint order, features in network order."""
    return [
        {"checkpoint": str(ckpt), "step": step, "feature": feature, "cknna": float(value)}
        for ckpt, step, values in results
        for feature, value in values.items()
    ]


def dynamics_matrix(rows: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, list[str], list[str]]:
    """``(values (features, checkpoints), feature names, checkpoint labels)``; NaN where a pair is missing."""
    checkpoints: dict[str, int | None] = {}
    features: dict[str, None] = {}
    for r in rows:
        checkpoints.setdefault(r["checkpoint"], r["step"])
        features.setdefault(r["feature"], None)
    ckpts, names = list(checkpoints), list(features)
    values = np.full((len(names), len(ckpts)), math.nan)
    for r in rows:
        values[names.index(r["feature"]), ckpts.index(r["checkpoint"])] = r["cknna"]
    labels = [checkpoint_label(c, checkpoints[c]) for c in ckpts]
    return values, names, labels


def dynamics_summary(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per checkpoint, over the transformer blocks only (``block_*``): ``mean_over_blocks``,
    ``max_over_blocks`` and the ``argmax_block``: the average and the peak of each curve, as named
    aggregates (the protocol itself defines none)."""
    values, names, labels = dynamics_matrix(rows)
    blocks = [i for i, n in enumerate(names) if n.startswith("block_")]
    checkpoints = list(dict.fromkeys(r["checkpoint"] for r in rows))
    out = []
    for c, (ckpt, label) in enumerate(zip(checkpoints, labels)):
        col = values[blocks, c]
        ok = np.isfinite(col)
        best = int(np.argmax(np.where(ok, col, -np.inf))) if ok.any() else None
        out.append(
            {
                "checkpoint": ckpt,
                "label": label,
                "mean_over_blocks": float(col[ok].mean()) if ok.any() else None,
                "max_over_blocks": float(col[ok].max()) if ok.any() else None,
                "argmax_block": None if best is None else names[blocks[best]],
            }
        )
    return out


def write_dynamics(
    rows: Sequence[Mapping[str, Any]], out_dir: str | Path, meta: Mapping[str, Any] | None = None
) -> dict[str, Path]:
    """``dynamics.csv`` (one row per checkpoint x feature), ``dynamics.json`` (rows + protocol ``meta``) and
    ``dynamics.png`` (the heat map) in ``out_dir``."""
    from vfmvae.report.plots import heatmap_png

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "dynamics.csv", "json": out / "dynamics.json", "png": out / "dynamics.png"}
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["checkpoint", "step", "feature", "cknna"])
        writer.writeheader()
        writer.writerows(rows)
    summary = dynamics_summary(rows)
    paths["json"].write_text(
        json.dumps({"rows": list(rows), "summary": summary, "protocol": dict(meta or {})}, indent=2)
    )
    values, names, labels = dynamics_matrix(rows)
    reference = (meta or {}).get("reference", "reference VFM")
    title = f"CKNNA of diffusion blocks with {reference} (t = {(meta or {}).get('noise_fraction', 0.5)})"
    paths["png"].write_bytes(heatmap_png(values, names, labels, title=title, xlabel="checkpoint"))
    return paths
