"""One loader for every tokenizer kind: `load_any_tokenizer(source, preset, kwargs)` (paper Table 1 compares
VFM-VAE, VA-VAE and SD-VAE under the same diffusion training; docs/analyses.md, "Table 1").

Commands and callbacks name a tokenizer by a *source* and, where the source does not say it, a *preset*:

=====================================  ==========================================================================
source                                 loaded as
=====================================  ==========================================================================
``None`` / ``"none"``                  a random tokenizer of ``preset`` (tests and the CPU demo; seeded)
folder with a VFM-VAE ``config.json``  `vfmvae.tokenizer.export.load_tokenizer` (format ``vfmvae-tokenizer/1``)
folder with a baseline export          `vfmvae.baselines.export.load_baseline` (format ``kl-autoencoder/1``)
diffusers ``AutoencoderKL`` folder     `vfmvae.baselines.from_diffusers_autoencoder` (SD-VAE)
file, ``preset`` a baseline preset     `vfmvae.baselines.from_official_vavae` (``kwargs``: the LightningDiT
                                       ``tokenizer/configs/*.yaml``; default the release's f16d32 config)
file, otherwise                        the official VFM-VAE release (``kwargs``: its generator kwargs)
=====================================  ==========================================================================

Presets are `vfmvae.tokenizer.PRESETS` (VFM-VAE) and `vfmvae.baselines.BASELINE_PRESETS` (``vavae-f16d32``,
``sd-vae-ft-ema``, ``debug-vavae``). Whatever the kind, the result satisfies `vfmvae.tokenizer.interface.Tokenizer`;
nothing downstream asks which kind it is.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from .interface import check_tokenizer

log = logging.getLogger(__name__)

__all__ = [
    "load_any_tokenizer",
    "tokenizer_presets",
    "build_random_tokenizer",
    "is_baseline_preset",
    "tokenizer_record",
    "recorded_weights_sha256",
]


def is_baseline_preset(preset: str | None) -> bool:
    from vfmvae.baselines.config import BASELINE_PRESETS

    return preset in BASELINE_PRESETS


def tokenizer_presets() -> list[str]:
    from vfmvae.baselines.config import BASELINE_PRESETS

    from .config import PRESETS

    return sorted([*PRESETS, *BASELINE_PRESETS])


def build_random_tokenizer(preset: str, decoder_only: bool = False, vfm_config: dict | None = None) -> torch.nn.Module:
    """A tokenizer of ``preset`` initialised from the *current* global RNG (the caller seeds it), any kind."""
    from .config import PRESETS

    if is_baseline_preset(preset):
        from vfmvae.baselines import KLAutoencoder

        return KLAutoencoder(preset)
    if preset not in PRESETS:
        raise KeyError(f"unknown tokenizer preset {preset!r}; known: {tokenizer_presets()}")
    from .model import VFMVAE

    return VFMVAE(preset, decoder_only=decoder_only, vfm_config=vfm_config)


def _random(preset: str, decoder_only: bool, vfm_config: dict | None) -> torch.nn.Module:
    log.warning("tokenizer %r with RANDOM weights (no tokenizer path given): demo/tests only", preset)
    with torch.random.fork_rng(devices=[]):  # seeded: two runs (and a resumed one) get the same tokenizer
        torch.manual_seed(0)
        return build_random_tokenizer(preset, decoder_only, vfm_config)


def _folder(path: Path, decoder_only: bool, vfm_pretrained, vfm_config) -> torch.nn.Module:
    config = path / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"tokenizer folder {path} has no config.json (an export folder or a diffusers folder)")
    record = json.loads(config.read_text())
    from vfmvae.baselines.export import BASELINE_EXPORT_FORMAT, load_baseline

    if record.get("format") == BASELINE_EXPORT_FORMAT:
        return load_baseline(path)
    if record.get("_class_name") == "AutoencoderKL":
        from vfmvae.baselines import from_diffusers_autoencoder

        return from_diffusers_autoencoder(str(path))
    from .export import load_tokenizer

    model = load_tokenizer(path, decoder_only=decoder_only, vfm_pretrained=vfm_pretrained)
    model.source = str(path)
    return model


def load_any_tokenizer(
    source: str | os.PathLike | None,
    preset: str | None = None,
    kwargs: Any = None,
    *,
    decoder_only: bool = False,
    vfm_pretrained: str | os.PathLike | None = None,
    vfm_config: dict | None = None,
    vfm_dtype: str | None = None,
) -> torch.nn.Module:
    """A tokenizer in eval mode, frozen, fp32 (see the module docstring for ``source`` / ``preset`` / ``kwargs``).

    ``decoder_only`` lets VFM-VAE skip its frozen VFM and latent head (decoding only); baselines are small and
    always load whole. ``vfm_dtype`` sets the VFM precision of an official VFM-VAE release file.
    """
    if source is None or str(source).lower() == "none":
        if preset is None:
            raise ValueError("no tokenizer source: give a tokenizer folder or file, or a preset for a random one")
        model = _random(preset, decoder_only, vfm_config)
    else:
        path = Path(os.path.expanduser(str(source)))
        if path.is_dir():
            model = _folder(path, decoder_only, vfm_pretrained, vfm_config)
        elif not path.is_file():
            raise FileNotFoundError(f"tokenizer not found: {path} (an export folder, a diffusers folder or a file)")
        elif is_baseline_preset(preset):
            from vfmvae.baselines import from_official_vavae

            model = from_official_vavae(str(path), kwargs)
        else:
            from .export import load_tokenizer

            if kwargs is None:
                raise ValueError(
                    f"{path.name} is a tokenizer file: give the official VFM-VAE generator kwargs (--tokenizer-kwargs) "
                    f"or, for a released VA-VAE, a baseline preset (--tokenizer-preset vavae-f16d32)"
                )
            model = load_tokenizer(path, decoder_only=decoder_only, vfm_pretrained=vfm_pretrained,
                                   generator_kwargs=kwargs, vfm_dtype=vfm_dtype)  # fmt: skip
            model.source = str(path)
    return check_tokenizer(model.float().eval().requires_grad_(False))


def tokenizer_record(model: torch.nn.Module) -> dict[str, Any]:
    """The record manifests and checkpoints store: the interface's `provenance()`, with the hash of the exported
    weights where the model was loaded from an export (a decoder-only VFM-VAE hashes only its decoder)."""
    record = model.provenance()
    exported = (getattr(model, "export_record", None) or {}).get("weights_sha256")
    if exported:
        record["weights_sha256"] = exported
    return record


def recorded_weights_sha256(folder: str | os.PathLike) -> str | None:
    """The ``weights_sha256`` an export folder of any kind records in its ``config.json`` (no weights read); None for
    a folder without one (a diffusers folder). A VFM-VAE export's config is read and checked by its own reader."""
    path = Path(folder)
    if not (path / "config.json").is_file():
        return None
    from vfmvae.baselines.export import BASELINE_EXPORT_FORMAT

    record = json.loads((path / "config.json").read_text())
    if record.get("format") == BASELINE_EXPORT_FORMAT or record.get("_class_name") == "AutoencoderKL":
        return record.get("weights_sha256")
    from .export import read_export_config

    return read_export_config(path).get("weights_sha256")
