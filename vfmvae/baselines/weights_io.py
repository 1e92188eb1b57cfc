"""Safe reading of third-party weight files: safetensors, or ``torch.load(..., weights_only=True)``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["read_state_dict"]


def _load_file(path: Path, what: str) -> Any:
    from vfmvae.utils.safe_load import load_user_file

    return load_user_file(path, what=what)


def read_state_dict(
    source: Mapping[str, Any] | str | os.PathLike, nested: tuple[str, ...] = (), what: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from a file or a loaded dict; a dict holding its weights under one of ``nested``
    (e.g. a training checkpoint's ``"state_dict"``) is unwrapped. Non-tensor entries are an error."""
    data = source if isinstance(source, Mapping) else _load_file(Path(source).expanduser(), what)
    for key in nested:
        if isinstance(data.get(key), Mapping):
            data = data[key]
            break
    not_tensors = [k for k, v in data.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise TypeError(
            f"{what}: entries {not_tensors[:5]} are not tensors (expected a state dict"
            + (f", or one nested under {list(nested)}" if nested else "")
            + ")"
        )
    return dict(data)
