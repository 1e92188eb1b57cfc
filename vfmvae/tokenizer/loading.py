"""Load the tokenizer's decoder (decoder-only; docs/design.md, "Evaluation protocol") and the latent
statistics for decoding, and expand ``${VAR}`` paths of run configs.

Plain PyTorch (no Lightning import); used by `callbacks/sample_grid.py`, `callbacks/joint_alignment.py`,
`callbacks/se_cknna_probe.py` and `vfmvae sample` (moved here from `lightning_modules/tokenizer_loading.py`
so that callbacks never import `lightning_modules`).

``load_decoder(source, preset=..., generator_kwargs=...)``:

* a folder written by ``VFMVAE.save_pretrained`` -> ``VFMVAE.from_pretrained(folder, decoder_only=True)``;
* a released official ``.pth``/``.pt`` (``G_ema`` wrapper or plain state dict) -> ``from_official(...,
  decoder_only=True)``; the official generator kwargs (the stage YAML's ``G_kwargs``) come from
  ``generator_kwargs`` (a dict, or a ``.json``/``.yaml`` file);
* ``None`` -> a decoder of ``preset`` with **random weights** (tests and the CPU demo only; logged).

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
    """A decoder-only `VFMVAE` in eval mode, fp32, frozen (see the module docstring)."""
    from vfmvae.tokenizer import VFMVAE, from_official

    if source is None:
        log.warning("tokenizer decoder %r with RANDOM weights (no tokenizer path given): demo/tests only", preset)
        with torch.random.fork_rng(devices=[]):  # seeded: two runs (and a resumed one) decode alike
            torch.manual_seed(0)
            model = VFMVAE(preset, decoder_only=True)
    else:
        path = Path(os.path.expanduser(str(source)))
        if path.is_dir():
            if not hasattr(VFMVAE, "from_pretrained"):
                raise RuntimeError(
                    f"{path} is a folder, but this build has no VFMVAE.from_pretrained yet; give the "
                    "official release file instead"
                )
            model = VFMVAE.from_pretrained(path, decoder_only=True)
        elif path.is_file():
            model = from_official(str(path), _read_kwargs(generator_kwargs), decoder_only=True)
        else:
            raise FileNotFoundError(f"tokenizer not found: {path} (a save_pretrained folder or the official .pth)")
    return model.float().eval().requires_grad_(False)


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
