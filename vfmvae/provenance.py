"""Provenance of artefacts: a content hash of a module's weights and a JSON-safe config record.

(docs/design.md, "Checkpoints, resume and provenance"): the tokenizer's config and weights hash flow into the latent-cache
manifest, then into the diffusion checkpoint and the sample `.npz`, so any number can be traced back to
the exact weights that produced it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def state_dict_sha256(state: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, in sorted name order.

    Independent of device and of dict order; two modules with bit-identical weights share a hash.
    """
    sd = state.state_dict() if isinstance(state, nn.Module) else state
    h = hashlib.sha256()
    for name in sorted(sd):
        t = sd[name]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        # bf16 has no numpy dtype: hash its raw bytes through a same-width integer view.
        raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
        h.update(raw.numpy().tobytes())
    return h.hexdigest()


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, tuples, tensors and paths -> plain JSON types (for manifests and `.npz` metadata)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def check_sha256(state: nn.Module | Mapping[str, torch.Tensor], expected: str, mismatch: str) -> None:
    """Raise ``ValueError(mismatch)`` when `state_dict_sha256(state)` is not ``expected``.

    ``{got}`` and ``{expected}`` in ``mismatch`` become the first 12 hex digits of each (plain replacement, so
    braces in a path are safe); every caller names its own file and fix (a replaced export file, a VFM or text
    tower other than the one trained with).
    """
    got = state_dict_sha256(state)
    if got != expected:
        raise ValueError(mismatch.replace("{got}", got[:12]).replace("{expected}", expected[:12]))


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """sha256 hex digest of a file's bytes, read in chunks (cache shards, network weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def config_sha256(config: Any) -> str:
    return hashlib.sha256(json.dumps(to_jsonable(config), sort_keys=True).encode()).hexdigest()
