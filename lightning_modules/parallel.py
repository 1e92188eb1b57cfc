"""The Lightning strategy that runs the diffusion network sharded (FSDP2), and the refusal for modules
that cannot be sharded (docs/design.md, "Layers of the code").

Why FSDP2 through Lightning's ``ModelParallelStrategy``: it is the one sharded path that also runs on CPU
with gloo, so the code users run on GPUs is the code CI runs (Lightning's ``FSDPStrategy`` = FSDP1
refuses a CPU accelerator). The sharding plan itself is plain PyTorch in `vfmvae.dit.parallelize`
(applied by ``DiffusionModule.configure_model``); the DTensor handling of checkpoints in
`vfmvae.utils.fsdp_checkpoint`.

* :class:`FSDP2Strategy` is ``ModelParallelStrategy`` for pure data parallelism: the whole world is
  the data-parallel (= sharding) dimension unless sizes are given, the non-model part of a
  checkpoint (the EMA callback's shards) is gathered to full tensors when saved and re-sharded
  when loaded, and a sharded checkpoint folder is written under a temporary name and renamed.
* :func:`refuse_sharded_strategy` gives modules that do not support sharding (the tokenizer: its
  GAN step averages gradients itself, and at 50 M trainable decoder parameters sharding saves
  nothing worth the extra all-gathers) a clear error instead of a deep stack trace.
* ``python -m lightning_modules.parallel FOLDER OUTPUT.ckpt --trust-pickle``: one file from a sharded checkpoint folder
  (`vfmvae.utils.fsdp_checkpoint.consolidate_checkpoint`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from vfmvae.utils.fsdp_checkpoint import gather_dtensors, replace_path, reshard_like_parameters


def refuse_sharded_strategy(trainer: Any, module_name: str, reason: str) -> None:
    """Raise a clear error if ``trainer`` runs a sharding strategy (FSDP1/FSDP2/DeepSpeed)."""
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

    strategy = trainer.strategy
    if isinstance(strategy, (FSDPStrategy, ModelParallelStrategy, DeepSpeedStrategy)):
        raise ValueError(
            f"{module_name} does not support the {type(strategy).__name__} strategy ({reason}); "
            "use configs/trainer/ddp_bf16.yaml (strategy: ddp) or a single device"
        )


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
            (scales to any model; `vfmvae.utils.fsdp_checkpoint.consolidate_checkpoint` makes a single file); ``False`` = one full file assembled on rank 0.
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
        checkpoint.update(gather_dtensors(rest))
        if not self._save_distributed_checkpoint:
            super().save_checkpoint(checkpoint, filepath, storage_options)
            return
        # A folder checkpoint is written under a temporary name and renamed:
        # a crash mid-write never leaves a half-written folder under the final name.
        final = Path(self.broadcast(str(filepath)))
        partial = final.with_name(final.name + ".partial")
        if self.global_rank == 0 and partial.exists():
            shutil.rmtree(partial) if partial.is_dir() else partial.unlink()
        self.barrier("fsdp2_checkpoint_prepare")
        super().save_checkpoint(checkpoint, partial, storage_options)
        self.barrier("fsdp2_checkpoint_written")
        if self.global_rank == 0:
            replace_path(partial, final)
        self.barrier("fsdp2_checkpoint_renamed")

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        # The CLI passes weights_only=True (the metadata holds only tensors and plain data) unless --trust-pickle;
        # a direct Trainer.fit(ckpt_path=...) without weights_only reads the run's own folder in full, as before.
        checkpoint = super().load_checkpoint(
            checkpoint_path, weights_only=False if weights_only is None else weights_only
        )
        params = dict(self.lightning_module.named_parameters())
        reshard_like_parameters({k: v for k, v in checkpoint.items() if k != "state_dict"}, params)
        return checkpoint


__all__ = ["FSDP2Strategy", "refuse_sharded_strategy"]


if __name__ == "__main__":
    import sys

    from vfmvae.utils.fsdp_checkpoint import consolidate_checkpoint

    args = [a for a in sys.argv[1:] if a != "--trust-pickle"]
    if len(args) != 2:
        raise SystemExit("usage: python -m lightning_modules.parallel CHECKPOINT_FOLDER OUTPUT.ckpt [--trust-pickle]")
    try:
        print(consolidate_checkpoint(args[0], args[1], trust_pickle="--trust-pickle" in sys.argv))
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from err
