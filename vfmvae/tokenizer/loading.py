"""Load the tokenizer's decoder (decoder-only; docs/design.md, "Evaluation protocol") and the latent
statistics for decoding, and expand ``${VAR}`` paths of run configs.

Plain PyTorch (no Lightning import); used by `callbacks/sample_grid.py`, `callbacks/joint_alignment.py`,
`callbacks/se_cknna_probe.py` and `vfmvae sample` (moved here from `lightning_modules/tokenizer_loading.py`
so that callbacks never import `lightning_modules`).

``load_decoder(source, preset=..., generator_kwargs=...)`` loads any tokenizer kind through
`vfmvae.tokenizer.sources.load_any_tokenizer` (a VFM-VAE export folder or release file, a baseline export,
a diffusers SD-VAE folder, a released VA-VAE file with a baseline preset, or ``None`` = **random weights** of
``preset``: tests and the CPU demo only; logged). VFM-VAE is built decoder-only; the official generator kwargs
(the stage YAML's ``G_kwargs``) come from ``generator_kwargs`` (a dict, or a ``.json``/``.yaml`` file).

The decoder is built unconditionally (the release is class-agnostic), runs in fp32 and stays in eval().
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


def _read_kwargs(generator_kwargs: dict[str, Any] | str | os.PathLike | None) -> dict[str, Any]:
    if generator_kwargs is None:
        raise ValueError(
            "an official tokenizer file needs its generator kwargs (the stage YAML's G_kwargs): pass "
            "--tokenizer-kwargs FILE.json|.yaml"
        )
    if isinstance(generator_kwargs, dict):
        return generator_kwargs
    path = Path(generator_kwargs)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer generator kwargs file not found: {path}")
    if path.suffix == ".json":
        data = json.loads(path.read_text())
    else:
        import yaml

        data = yaml.safe_load(path.read_text())
    # Accept a fixture-style JSON ({"generator_kwargs": ...}) or an official config ({"G_kwargs": ...}).
    for key in ("generator_kwargs", "G_kwargs"):
        if isinstance(data, dict) and key in data:
            data = data[key]
    return dict(data)


def load_decoder(
    source: str | os.PathLike | None,
    preset: str = "vfmvae-f16d32-siglip2",
    generator_kwargs: dict[str, Any] | str | os.PathLike | None = None,
) -> nn.Module:
    """A tokenizer for decoding, in eval mode, fp32, frozen: any kind (`vfmvae.tokenizer.sources.load_any_tokenizer`;
    a VFM-VAE is built decoder-only)."""
    from .sources import load_any_tokenizer

    kwargs = generator_kwargs
    if kwargs is not None and not isinstance(kwargs, dict) and not (source and _is_baseline(preset)):
        kwargs = _read_kwargs(kwargs)
    return load_any_tokenizer(source, preset, kwargs, decoder_only=True)


def _is_baseline(preset: str | None) -> bool:
    from .sources import is_baseline_preset

    return is_baseline_preset(preset)


def load_latent_stats(path: str | os.PathLike | None, stats: dict[str, Any] | None = None):
    """`LatentNormalizer` from a ``latents_stats.pt`` file, else from a stats dict (e.g. a checkpoint's)."""
    from vfmvae.codec import LatentNormalizer

    if path is not None:
        return LatentNormalizer.load(path)
    if stats is not None:
        return LatentNormalizer.from_stats(
            {k: torch.as_tensor(v) for k, v in stats.items() if k in ("mean", "std")}, source="checkpoint provenance"
        )
    raise ValueError(
        "no latent statistics: give latents_stats.pt (written beside the latent cache, or the official "
        "file), or a checkpoint trained on a latent cache (it records them)"
    )


def resolve_path(value: str | None, what: str, optional: bool = False) -> str | None:
    """Expand ``$VAR`` / ``${VAR}`` in a config path; an unset variable is a clear error.

    The paper configs name their weights as ``${TOKENIZER}``, ``${DINOV2}`` so that
    ``make train-diffusion TOKENIZER=... DINOV2=...`` fills them in (callbacks in a list cannot be
    overridden one by one on the LightningCLI command line). ``optional``: unset -> ``None``.
    """
    if value is None:
        return None
    names = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", str(value))
    unset = [n for n in names if not os.environ.get(n)]  # unset or empty: both mean "not given"
    if unset:
        if optional:
            return None
        raise ValueError(
            f"{what}: {value!r} needs the environment variable {unset[0]}, which is not set; pass it to make "
            f"(e.g. `make train-diffusion MODEL=reg {unset[0]}=/path/...`) or see configs/diffusion/demo.yaml "
            "for a run without external files"
        )
    expanded = os.path.expandvars(str(value))
    return os.path.expanduser(expanded)
