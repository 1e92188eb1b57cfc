"""Sharded data parallelism (FSDP2) for the diffusion transformer, and the strategy that runs it.

Why FSDP2 through Lightning's ``ModelParallelStrategy`` (issue 14, ecosystem.md §3): it is the one
sharded path that also runs on CPU with gloo, so the code users run on GPUs is the code CI runs
(Lightning's ``FSDPStrategy`` = FSDP1 refuses a CPU accelerator). ``fully_shard`` turns parameters
into ``DTensor`` shards; the project EMA (`vfmvae.utils.ema`) updates those shards locally.

* :func:`apply_fsdp2` shards every repeated transformer ``Block`` (the FSDP unit, style.md
  principle 8: ``LightningDiTBlock``, ``SiTREGBlock``) and then the root, so the embedders, final
  layer and REPA/REG projectors form the root group. Extra entry points that bypass ``forward``
  (``forward_with_projections``) are registered so their parameters are gathered too.
* :func:`shard_diffusion_network` is the ``configure_model`` body of ``DiffusionModule``: a no-op
  without a device mesh (single device, DDP), FSDP2 over the data-parallel mesh otherwise.
* :class:`FSDP2Strategy` is ``ModelParallelStrategy`` for pure data parallelism: the whole world is
  the data-parallel (= sharding) dimension unless sizes are given, the non-model part of a
  checkpoint (the EMA callback's shards) is gathered to full tensors when saved and re-sharded
  when loaded, and a sharded checkpoint folder is written under a temporary name and renamed.
* :func:`refuse_sharded_strategy` gives modules that do not support sharding (the tokenizer: its
  GAN step averages gradients itself, and at 50 M trainable decoder parameters sharding saves
  nothing worth the extra all-gathers) a clear error instead of a deep stack trace.

Precision: parameters, gradients and their reductions stay float32 (no ``MixedPrecisionPolicy``);
``precision: bf16-mixed`` autocasts the compute. Keeping float32 parameters is what makes the
models' float32 islands (norm statistics, timestep embeddings, loss reductions) real float32
computations: with bf16 *parameters* a ``.float()`` on the activations would meet bf16 weights.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

# Methods some networks call instead of ``forward`` (the FSDP2 pre-forward hook must run for them).
EXTRA_FORWARD_METHODS = ("forward_with_projections",)


def dit_block_classes() -> tuple[type[nn.Module], ...]:
    """The repeated transformer blocks of the project's DiTs (the FSDP / checkpoint unit)."""
    from vfmvae.dit.lightningdit import LightningDiTBlock
    from vfmvae.dit.sit_reg import SiTREGBlock

    return (LightningDiTBlock, SiTREGBlock)


def _unwrapped(module: nn.Module) -> nn.Module:
    """A ``torch.compile``'d module's original (``compile_blocks`` may have wrapped the blocks)."""
    return getattr(module, "_orig_mod", module)


def is_sharded(module: nn.Module) -> bool:
    """Whether ``fully_shard`` was applied to ``module`` (its parameters are DTensors)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


def apply_fsdp2(
    module: nn.Module,
    mesh: Any,
    block_classes: Iterable[type[nn.Module]],
    *,
    reshard_after_forward: bool = True,
    mp_policy: Any | None = None,
    extra_forward_methods: Iterable[str] = EXTRA_FORWARD_METHODS,
) -> int:
    """``fully_shard`` every instance of ``block_classes`` inside ``module``, then ``module`` itself.

    Args:
        module: the network (e.g. a ``LightningDiT``); sharded in place.
        mesh: a 1-D ``DeviceMesh`` (data parallel = sharding dimension), or 2-D for HSDP
            (replicate, shard).
        block_classes: the repeated block types; at least one instance must exist.
        reshard_after_forward: free gathered block parameters after forward (ZeRO-3); ``False``
            keeps them until backward (ZeRO-2: more memory, one all-gather less per block).
        mp_policy: an optional ``torch.distributed.fsdp.MixedPrecisionPolicy``; the default keeps
            float32 parameters and reductions (see the module docstring).
        extra_forward_methods: methods of ``module`` that are called instead of ``forward``.

    Returns:
        The number of blocks sharded.
    """
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    classes = tuple(block_classes)
    if not classes:
        raise ValueError("apply_fsdp2 needs at least one block class to shard")
    if is_sharded(module):
        raise RuntimeError(f"{type(module).__name__} is already sharded (fully_shard applied twice)")
    kwargs: dict[str, Any] = {"mesh": mesh}
    if mp_policy is not None:
        kwargs["mp_policy"] = mp_policy
    blocks = [m for m in module.modules() if m is not module and isinstance(_unwrapped(m), classes)]
    if not blocks:
        names = ", ".join(c.__name__ for c in classes)
        raise ValueError(f"no {names} found inside {type(module).__name__}: nothing to shard per block")
    for block in blocks:
        fully_shard(block, reshard_after_forward=reshard_after_forward, **kwargs)
    fully_shard(module, reshard_after_forward=reshard_after_forward, **kwargs)
    for name in extra_forward_methods:
        if callable(getattr(module, name, None)):
            register_fsdp_forward_method(module, name)
    return len(blocks)


def data_parallel_mesh(mesh: Any) -> Any:
    """The sharding mesh out of Lightning's ``("data_parallel", "tensor_parallel")`` mesh."""
    names = tuple(getattr(mesh, "mesh_dim_names", None) or ())
    if "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
        raise ValueError(
            f"tensor parallelism is not implemented for the DiT (tensor_parallel_size={mesh['tensor_parallel'].size()}); "
            "use lightning_modules.parallel.FSDP2Strategy (data-parallel sharding over all ranks)"
        )
    return mesh["data_parallel"] if "data_parallel" in names else mesh


def shard_diffusion_network(lightning_module: Any, attribute: str = "net", **kwargs: Any) -> bool:
    """``configure_model`` body: FSDP2-shard ``lightning_module.<attribute>`` when a mesh exists.

    Returns True when it sharded. Called again (e.g. ``fit`` then ``validate``) it does nothing.
    """
    mesh = getattr(lightning_module, "_device_mesh", None)
    if mesh is None:
        return False
    net = getattr(lightning_module, attribute)
    if is_sharded(net):
        return False
    n = apply_fsdp2(net, data_parallel_mesh(mesh), dit_block_classes(), **kwargs)
    log.info("FSDP2: sharded %d blocks + root of %s over %d ranks", n, type(net).__name__, mesh.size())
    return True


def refuse_sharded_strategy(trainer: Any, module_name: str, reason: str) -> None:
    """Raise a clear error if ``trainer`` runs a sharding strategy (FSDP1/FSDP2/DeepSpeed)."""
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

    strategy = trainer.strategy
    if isinstance(strategy, (FSDPStrategy, ModelParallelStrategy, DeepSpeedStrategy)):
        raise ValueError(
            f"{module_name} does not support the {type(strategy).__name__} strategy ({reason}); "
            "use configs/trainer/ddp_bf16.yaml (strategy: ddp) or a single device"
        )


# ---------------------------------------------------------------------- DTensors outside the model
def _gather_dtensors(obj: Any) -> Any:
    """Replace every DTensor in a nested dict/list by its full tensor on CPU (collective: all ranks)."""
    from torch.distributed.tensor import DTensor

    if isinstance(obj, DTensor):
        return obj.full_tensor().cpu()
    if isinstance(obj, dict):
        return {k: _gather_dtensors(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_gather_dtensors(v) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_gather_dtensors(v) for v in obj)
    return obj


def reshard_like_parameters(obj: Any, named_params: Mapping[str, torch.Tensor]) -> int:
    """In nested dicts, turn full tensors keyed by a sharded parameter's name into matching shards.

    The EMA state (`vfmvae.utils.ema`, keys ``"<attribute>.<param>"`` = LightningModule parameter
    names) is saved as full tensors by :class:`FSDP2Strategy`; on load it must become DTensor shards
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


def _strategy_base():
    from lightning.pytorch.strategies import ModelParallelStrategy

    return ModelParallelStrategy


class FSDP2Strategy(_strategy_base()):
    """``ModelParallelStrategy`` for data-parallel FSDP2 (see the module docstring).

    Args:
        data_parallel_size: ``"auto"`` = the world size (devices x nodes): every rank is a
            data-parallel replica and the network is sharded over all of them.
        tensor_parallel_size: ``"auto"`` = 1 (the DiT has no tensor-parallel plan).
        save_distributed_checkpoint: ``True`` = a checkpoint folder with one shard file per rank
            (scales to any model; :func:`consolidate_checkpoint` makes a single file); ``False`` = one full file assembled on rank 0.
        process_group_backend: ``None`` = nccl on GPU, gloo on CPU.
    """

    def __init__(
        self,
        data_parallel_size: int | str = "auto",
        tensor_parallel_size: int | str = "auto",
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            data_parallel_size=data_parallel_size,
            tensor_parallel_size=tensor_parallel_size,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            **kwargs,
        )

    def setup_environment(self) -> None:
        # Lightning's "auto" is (num_nodes, devices per node) = data x tensor parallel; a pure
        # FSDP run wants (world, 1). Resolve before the mesh is built in super().
        world = self.num_nodes * self.num_processes
        if self._tensor_parallel_size == "auto":
            self._tensor_parallel_size = 1
        if self._data_parallel_size == "auto":
            self._data_parallel_size = world // int(self._tensor_parallel_size)
        super().setup_environment()

    def setup(self, trainer: Any) -> None:
        from lightning.pytorch.utilities.model_helpers import is_overridden

        module = self.lightning_module
        if not is_overridden("configure_model", module):
            # Lightning's own message asks the user to write a sharding plan; for the project's modules
            # this means "this module is DDP-only" (TokenizerModule), so say that.
            refuse_sharded_strategy(trainer, type(module).__name__, "it has no FSDP sharding plan (configure_model)")
        super().setup(trainer)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        # Every rank calls this: gather the callbacks' DTensor shards (EMA) so rank 0 writes them whole.
        rest = {k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer_states")}
        checkpoint.update(_gather_dtensors(rest))
        if not self._save_distributed_checkpoint:
            super().save_checkpoint(checkpoint, filepath, storage_options)
            return
        # A folder checkpoint is written under a temporary name and renamed (conventions.md):
        # a crash mid-write never leaves a half-written folder under the final name.
        final = Path(self.broadcast(str(filepath)))
        partial = final.with_name(final.name + ".partial")
        if self.global_rank == 0 and partial.exists():
            shutil.rmtree(partial) if partial.is_dir() else partial.unlink()
        self.barrier("fsdp2_checkpoint_prepare")
        super().save_checkpoint(checkpoint, partial, storage_options)
        self.barrier("fsdp2_checkpoint_written")
        if self.global_rank == 0:
            _replace_path(partial, final)
        self.barrier("fsdp2_checkpoint_renamed")

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        # The metadata holds hyper-parameters and callback states (plain Python objects): the
        # checkpoint is the run's own, so it is read with weights_only=False (torch.load defaults to True).
        checkpoint = super().load_checkpoint(
            checkpoint_path, weights_only=False if weights_only is None else weights_only
        )
        params = dict(self.lightning_module.named_parameters())
        reshard_like_parameters({k: v for k, v in checkpoint.items() if k != "state_dict"}, params)
        return checkpoint


def consolidate_checkpoint(folder: str | os.PathLike, output: str | os.PathLike) -> Path:
    """One ``.ckpt`` file from an FSDP2 checkpoint folder (single process, no GPU needed).

    The file has the layout of a DDP Lightning checkpoint (``state_dict`` with full tensors, the
    callbacks' states incl. the full EMA, hyper-parameters, the modules' extras) minus the optimiser
    states, which DCP keys by parameter name: it is for sampling, export and fine-tuning starts;
    resume a run from the folder itself. ``python -m lightning_modules.parallel FOLDER OUTPUT``.
    (Lightning's ``consolidate_checkpoint`` utility expects the FSDP1 layout and fails here.)
    """
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from vfmvae.utils.checkpoint_io import atomic_save

    folder, output = Path(folder), Path(output)
    meta_path = folder / "meta.pt"
    if not folder.is_dir() or not meta_path.is_file():
        raise FileNotFoundError(f"{folder} is not an FSDP2 checkpoint folder (no meta.pt inside)")
    flat = output.with_name(output.name + ".dcp.tmp")
    try:
        dcp_to_torch_save(folder, flat)
        sharded = torch.load(flat, map_location="cpu", weights_only=False)
    finally:
        flat.unlink(missing_ok=True)
    checkpoint = torch.load(meta_path, map_location="cpu", weights_only=False)
    checkpoint["state_dict"] = sharded["state_dict"]
    atomic_save(checkpoint, output)
    return output


def _replace_path(src: Path, dst: Path) -> None:
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


__all__ = [
    "FSDP2Strategy",
    "apply_fsdp2",
    "consolidate_checkpoint",
    "data_parallel_mesh",
    "dit_block_classes",
    "is_sharded",
    "refuse_sharded_strategy",
    "reshard_like_parameters",
    "shard_diffusion_network",
]


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m lightning_modules.parallel CHECKPOINT_FOLDER OUTPUT.ckpt")
    print(consolidate_checkpoint(sys.argv[1], sys.argv[2]))
