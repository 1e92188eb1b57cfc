"""Safe reading of third-party weight files: safetensors, or ``torch.load(..., weights_only=True)``."""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["read_state_dict"]


def _load_file(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message is a page long; keep the line that names the offending object.
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        reason = next((ln for ln in lines if "Unsupported global" in ln), lines[0] if lines else "")
        raise pickle.UnpicklingError(
            f"{what} {path} holds more than tensors and cannot be read safely ({reason}). If you "
            "trust the file, extract its weights once with `sd = torch.load(P, weights_only=False)['state_dict']; "
            "torch.save(sd, OUT)` and load OUT"
        ) from err


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
