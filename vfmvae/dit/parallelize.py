"""The FSDP2 sharding plan of the diffusion networks, applied from outside the model (torchtitan style;
docs/design.md, "Layers of the code").

Plain PyTorch, no Lightning: ``fully_shard`` turns parameters into ``DTensor`` shards; the project EMA
(`vfmvae.utils.ema`) updates those shards locally.

* :func:`apply_fsdp2` shards every repeated transformer block (the FSDP unit: the network's ``blocks``,
  e.g. ``LightningDiTBlock``, ``SiTREGBlock``) and then the root, so the embedders, final layer and
  REPA/REG projectors form the root group. Methods that run parameters without ``forward`` (the
  network's ``fsdp_forward_methods``, e.g. ``forward_with_projections``) are registered so their
  parameters are gathered too.
* :func:`shard_diffusion_network` is the ``configure_model`` body of ``DiffusionModule``: a no-op without
  a device mesh (single device, DDP), FSDP2 over the data-parallel mesh otherwise.

Precision: parameters, gradients and their reductions stay float32 (no ``MixedPrecisionPolicy``);
``precision: bf16-mixed`` autocasts the compute. Keeping float32 parameters is what makes the models'
float32 islands (norm statistics, timestep embeddings, loss reductions) real float32 computations: with
bf16 *parameters* a ``.float()`` on the activations would meet bf16 weights (docs/design.md, "Precision
policy").
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from torch import nn

log = logging.getLogger(__name__)

__all__ = [
    "EXTRA_FORWARD_METHODS",
    "apply_fsdp2",
    "block_classes_of",
    "data_parallel_mesh",
    "is_sharded",
    "shard_diffusion_network",
]

# Methods some networks call instead of ``forward`` (the FSDP2 pre-forward hook must run for them);
# networks list their own in ``fsdp_forward_methods``.
EXTRA_FORWARD_METHODS = ("forward_with_projections",)


def _unwrapped(module: nn.Module) -> nn.Module:
    """A ``torch.compile``'d module's original (``compile_blocks`` may have wrapped the blocks)."""
    return getattr(module, "_orig_mod", module)


def block_classes_of(net: nn.Module) -> tuple[type[nn.Module], ...]:
    """The classes of ``net.blocks`` (any `DiffusionNetwork`), in order of appearance."""
    blocks = getattr(net, "blocks", None)
    if blocks is None or len(blocks) == 0:
        raise ValueError(f"{type(net).__name__} has no `blocks` to shard (a DiffusionNetwork lists its blocks)")
    return tuple(dict.fromkeys(type(_unwrapped(b)) for b in blocks))


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
        extra_forward_methods: methods of ``module`` that are called instead of ``forward``
            (added to the module's own ``fsdp_forward_methods``).

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
    methods = dict.fromkeys([*extra_forward_methods, *getattr(module, "fsdp_forward_methods", ())])
    for name in methods:
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


def shard_diffusion_network(owner: Any, attribute: str = "net", **kwargs: Any) -> bool:
    """``configure_model`` body: FSDP2-shard ``owner.<attribute>`` when ``owner`` has a device mesh.

    ``owner`` is duck-typed (a LightningModule: its ``_device_mesh`` is set by Lightning's
    ``ModelParallelStrategy``). Returns True when it sharded; called again (``fit`` then ``validate``) it
    does nothing.
    """
    mesh = getattr(owner, "_device_mesh", None)
    if mesh is None:
        return False
    net = getattr(owner, attribute)
    if is_sharded(net):
        return False
    n = apply_fsdp2(net, data_parallel_mesh(mesh), block_classes_of(net), **kwargs)
    log.info("FSDP2: sharded %d blocks + root of %s over %d ranks", n, type(net).__name__, mesh.size())
    return True
