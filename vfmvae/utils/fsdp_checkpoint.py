"""FSDP2 checkpoints outside the model: DTensor state of callbacks, and one file from a sharded folder.

Plain PyTorch (no Lightning import; docs/design.md, "Checkpoints, resume and provenance"). It lives in
`vfmvae.utils` rather than beside the DiT sharding plan because it concerns the *checkpoint format*
(Lightning's ``ModelParallelStrategy`` folders written with torch.distributed.checkpoint), not a network:
any sharded module's checkpoint goes through it. `lightning_modules.parallel.FSDP2Strategy` calls
:func:`gather_dtensors` / :func:`reshard_like_parameters` when saving / loading, and
``python -m lightning_modules.parallel FOLDER OUTPUT --trust-pickle`` runs :func:`consolidate_checkpoint`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["consolidate_checkpoint", "gather_dtensors", "replace_path", "reshard_like_parameters"]


def gather_dtensors(obj: Any) -> Any:
    """Replace every DTensor in a nested dict/list by its full tensor on CPU (collective: all ranks)."""
    from torch.distributed.tensor import DTensor

    if isinstance(obj, DTensor):
        return obj.full_tensor().cpu()
    if isinstance(obj, dict):
        return {k: gather_dtensors(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [gather_dtensors(v) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(gather_dtensors(v) for v in obj)
    return obj


def reshard_like_parameters(obj: Any, named_params: Mapping[str, torch.Tensor]) -> int:
    """In nested dicts, turn full tensors keyed by a sharded parameter's name into matching shards.

    The EMA state (`vfmvae.utils.ema`, keys ``"<attribute>.<param>"`` = LightningModule parameter
    names) is saved as full tensors by the FSDP2 strategy; on load it must become DTensor shards
    again before ``EMA.load_state_dict`` copies it into its DTensor shadows. Every rank holds the full
    tensor, so each takes its own chunk without communication. Returns the number converted.
    """
    from torch.distributed.tensor import DTensor, distribute_tensor

    count = 0
    if isinstance(obj, dict):
        for key, value in list(obj.items()):
            param = named_params.get(key) if isinstance(key, str) else None
            if isinstance(value, torch.Tensor) and not isinstance(value, DTensor) and isinstance(param, DTensor):
                if tuple(value.shape) != tuple(param.shape):
                    raise ValueError(
                        f"checkpoint tensor {key!r} has shape {tuple(value.shape)}, the sharded parameter "
                        f"{tuple(param.shape)}"
                    )
                obj[key] = distribute_tensor(
                    value.to(param.device, param.dtype), param.device_mesh, param.placements, src_data_rank=None
                )
                count += 1
            else:
                count += reshard_like_parameters(value, named_params)
    elif isinstance(obj, list):
        for value in obj:
            count += reshard_like_parameters(value, named_params)
    return count


def consolidate_checkpoint(
    folder: str | os.PathLike, output: str | os.PathLike, trust_pickle: bool | None = None
) -> Path:
    """One ``.ckpt`` file from an FSDP2 checkpoint folder (single process, no GPU needed).

    The file has the layout of a DDP Lightning checkpoint (``state_dict`` with full tensors, the
    callbacks' states incl. the full EMA, hyper-parameters, the modules' extras) minus the optimiser
    states, which DCP keys by parameter name: it is for sampling, export and fine-tuning starts;
    resume a run from the folder itself. ``python -m lightning_modules.parallel FOLDER OUTPUT --trust-pickle``.
    (Lightning's ``consolidate_checkpoint`` utility expects the FSDP1 layout and fails here.)
    ``torch.distributed.checkpoint`` unpickles the folder's ``.metadata`` and non-tensor entries in full (it can
    run code stored there), so a folder is consolidated only when trusted: ``trust_pickle=True`` or
    ``--trust-pickle`` (`vfmvae.utils.safe_load.trusting_pickles`); meant for folders your own runs wrote.
    """
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from vfmvae.utils.checkpoint_io import atomic_save
    from vfmvae.utils.safe_load import UnsafePickleError, load_user_file, pickles_trusted

    folder, output = Path(folder), Path(output)
    meta_path = folder / "meta.pt"
    if not folder.is_dir() or not meta_path.is_file():
        raise FileNotFoundError(f"{folder} is not an FSDP2 checkpoint folder (no meta.pt inside)")
    if not (pickles_trusted() if trust_pickle is None else trust_pickle):
        raise UnsafePickleError(
            f"sharded checkpoint {folder}: not read: torch.distributed.checkpoint unpickles its .metadata and "
            "non-tensor entries (which can run code); pass --trust-pickle for a folder your own run wrote"
        )
    flat = output.with_name(output.name + ".dcp.tmp")
    try:
        dcp_to_torch_save(folder, flat)
        sharded = load_user_file(flat, what="consolidated checkpoint", trust_pickle=False)
    finally:
        flat.unlink(missing_ok=True)
    checkpoint = load_user_file(meta_path, what="checkpoint metadata", trust_pickle=False)
    checkpoint["state_dict"] = sharded["state_dict"]
    atomic_save(checkpoint, output)
    return output


def replace_path(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; an existing ``dst`` (file or folder) is removed only after the move."""
    old = None
    if dst.exists() or dst.is_symlink():
        old = dst.with_name(dst.name + ".old")
        if old.exists():
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()
