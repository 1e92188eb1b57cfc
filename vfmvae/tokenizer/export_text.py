"""The text tower of a text-conditional tokenizer in an export folder (docs/conditional.md).

Like the frozen VFM (`export.py`), the SigLIP2 text tower is recorded, not copied, when it was loaded
from a local folder: `config.json["text_encoder"]` holds its preset, its Hugging Face text config, its
compute dtype, the folder and the sha256 of its weights, and loading rebuilds it from that folder (or
`text_pretrained=`) and checks the hash. A randomly initialised tower (tests, demos) cannot be rebuilt
from a folder, so its weights go to `text_encoder.safetensors`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from vfmvae.provenance import check_sha256, state_dict_sha256

TEXT_WEIGHTS_NAME = "text_encoder.safetensors"


def text_record(model: nn.Module) -> dict[str, Any]:
    """The `config.json` record of `model`'s text tower (nothing written)."""
    tower = model.text_encoder
    path = getattr(model, "text_pretrained", None)
    return {
        "preset": getattr(tower, "preset", None) or model.cfg.text_encoder,
        "hf_config": tower.hf_config_dict(),
        "compute_dtype": tower.compute_dtype,
        "pretrained": None if path is None else str(Path(path).expanduser().resolve()),
        "included": path is None,
        "weights_sha256": state_dict_sha256(_state(tower)),
    }


def write_text_weights(model: nn.Module, record: Mapping[str, Any] | None, out: Path, to_bytes: Callable) -> None:
    """`text_encoder.safetensors` when the record says the tower is included; a stale copy is removed."""
    from vfmvae.utils.checkpoint_io import atomic_write

    if record is not None and record["included"]:
        atomic_write(out / TEXT_WEIGHTS_NAME, lambda f: f.write(to_bytes(_state(model.text_encoder))))
    elif (out / TEXT_WEIGHTS_NAME).exists():
        (out / TEXT_WEIGHTS_NAME).unlink()  # a stale copy from an earlier export would be misleading


def _state(tower: nn.Module) -> dict:
    return {k: v.detach().cpu().contiguous().clone() for k, v in tower.state_dict().items()}


def load_text_record(
    record: Mapping[str, Any], directory: Path, text_pretrained: str | os.PathLike | None, verify: bool
) -> tuple[nn.Module | None, str | None]:
    """(text tower, the folder it came from) for an export record; (None, None) without a text tower."""
    info = record.get("text_encoder")
    if info is None:
        return None, None
    from safetensors.torch import load_file

    from vfmvae.vfm.siglip2_text import SiglipTextTower

    dtype = info.get("compute_dtype", "float32")
    if info.get("included") and text_pretrained is None:
        tower = SiglipTextTower.from_config(info["hf_config"], dtype, preset=info.get("preset"))
        tower.load_state_dict(load_file(str(directory / TEXT_WEIGHTS_NAME)))
        return tower, None
    source = text_pretrained if text_pretrained is not None else info.get("pretrained")
    if source is None or not Path(source).expanduser().exists():
        raise FileNotFoundError(
            f"the text tower of this export was loaded from {source!r}, which does not exist here; pass "
            "text_pretrained=<local SigLIP2 folder> (or decoder_only=True to skip the encoders)"
        )
    tower = SiglipTextTower.from_pretrained(source, dtype, preset=info.get("preset"))
    if verify and info.get("weights_sha256"):
        mismatch = f"text tower weights at {source} (sha256 {{got}}) differ from the ones the tokenizer was trained "
        check_sha256(tower, info["weights_sha256"], mismatch + "with ({expected}); pass verify_vfm=False to override")
    return tower, str(source)


__all__ = ["TEXT_WEIGHTS_NAME", "load_text_record", "text_record", "write_text_weights"]
