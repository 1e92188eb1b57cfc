"""Export folders of the baseline tokenizers: ``config.json`` + ``model.safetensors``, hash-checked.

    <dir>/config.json         {"format": "kl-autoencoder/1", "config": KLAutoencoderConfig, "weights_sha256", ...}
    <dir>/model.safetensors   every weight of the autoencoder

A released VA-VAE checkpoint (or a diffusers SD-VAE folder) converted once with `from_official_vavae` /
`from_diffusers_autoencoder` and saved here loads without its converter; tests and the demo save tiny random
VA-VAEs this way so that every command takes a tokenizer as a path, whatever its kind
(`vfmvae.tokenizer.sources.load_any_tokenizer`). ``weights_sha256`` is the tokenizer interface's hash
(`vfmvae.tokenizer.interface`), the one latent-cache manifests and checkpoints record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vfmvae.provenance import state_dict_sha256, to_jsonable

from .autoencoder import KLAutoencoder
from .config import KLAutoencoderConfig

__all__ = ["BASELINE_EXPORT_FORMAT", "save_baseline", "load_baseline"]

BASELINE_EXPORT_FORMAT = "kl-autoencoder/1"
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


def save_baseline(model: KLAutoencoder, directory: str | os.PathLike, provenance: dict[str, Any] | None = None) -> dict:
    """Write ``model`` to ``directory`` (created); returns the config record."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    record = {
        "format": BASELINE_EXPORT_FORMAT,
        "kind": model.kind,
        "config": model.cfg.to_dict(),
        "weights_sha256": state_dict_sha256(state),
        "provenance": to_jsonable(dict(provenance or {})),
    }
    save_file(state, str(directory / WEIGHTS_NAME))
    (directory / CONFIG_NAME).write_text(json.dumps(record, indent=2) + "\n")
    return record


def load_baseline(directory: str | os.PathLike) -> KLAutoencoder:
    """A `KLAutoencoder` in eval mode from a folder written by `save_baseline` (hash and keys checked)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    record = json.loads((directory / CONFIG_NAME).read_text())
    if record.get("format") != BASELINE_EXPORT_FORMAT:
        raise ValueError(f"{directory}: not a baseline tokenizer export (format {record.get('format')!r})")
    state = load_file(str(directory / WEIGHTS_NAME))
    digest = state_dict_sha256(state)
    if digest != record["weights_sha256"]:
        raise ValueError(
            f"{directory / WEIGHTS_NAME}: weights hash {digest[:12]} != recorded {record['weights_sha256'][:12]} "
            "(file corrupted or replaced)"
        )
    model = KLAutoencoder(KLAutoencoderConfig.from_dict(record["config"]))
    model.load_state_dict(state, strict=True)
    model.source = str(directory)
    model.export_record = record
    return model.eval().requires_grad_(False)
