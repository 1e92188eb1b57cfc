"""Model FLOPs of the DiT training step, counted analytically from the config (MFU).

Counting rule (the one every number in `docs/benchmarks.md` uses):

* Only matrix products are counted: a product of an `(m, k)` and a `(k, n)` matrix costs
  `2 * m * n * k` FLOPs (one multiply + one add per term). Linear layers, the patch-embedding
  convolution (a linear over flattened patches) and both attention products (`Q K^T` and
  `softmax(.) V`, `2 * N^2 * D` each per sample, summed over heads) are counted; element-wise work
  (norms, RoPE, modulation, softmax, activations, the loss) and embedding look-ups are not.
  This is the convention of `torch.utils.flop_counter.FlopCounterMode`, so the two agree exactly
  on the forward pass (tested on the tiny config in `tests/test_bench.py`).
* A training step costs `3 x` the forward (backward = 2 x forward: one product for the input
  gradient, one for the weight gradient). This is *model* FLOPs: recomputation by activation
  checkpointing is not counted, so MFU does not rise when checkpointing is switched on
  (the PaLM definition of MFU, as opposed to hardware FLOPs utilisation).
* Per image, LightningDiT-XL/1 on a 32x16x16 latent (256 tokens): 2.37e11 FLOPs forward,
  7.12e11 per trained image, so 500 images/s on one H100 (989 TFLOP/s bf16 dense) is 36% MFU
  (the issue's goal); REG SiT-XL/1: 2.42e11 forward (257 tokens, GELU MLP, projector).

The tokenizer (SigLIP2 + decoder + discriminators) is too irregular to count by hand; its FLOPs are
measured once with `FlopCounterMode` (`count_flops`), which on CPU needs `register_cpu_sdpa_flops()`
because PyTorch registers no formula for the CPU flash-attention kernel (it would count 0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils import flop_counter

from vfmvae.dit import LightningDiTConfig, SiTREGConfig

TRAIN_FLOPS_MULTIPLIER = 3  # forward + backward (input and weight gradients)


def matmul_flops(m: int, n: int, k: int) -> int:
    """FLOPs of an `(m, k) @ (k, n)` product: `2 * m * n * k`."""
    return 2 * m * n * k


@dataclass(frozen=True)
class FlopBreakdown:
    """Forward FLOPs per *sample*, by part; `total` is their sum."""

    embed: int  # patch embedding, timestep MLP, class-token input projection (REG)
    attention_linear: int  # qkv + output projection, all blocks
    attention_scores: int  # Q K^T and A V, all blocks
    mlp: int  # all blocks
    modulation: int  # adaLN linears (one per block + final), per sample not per token
    heads: int  # final linear(s) and the REG projector(s)

    @property
    def total(self) -> int:
        return self.embed + self.attention_linear + self.attention_scores + self.mlp + self.modulation + self.heads


def _block_flops(tokens: int, dim: int, mlp_matmuls: list[tuple[int, int]], n_mod: int) -> dict[str, int]:
    """One transformer block for one sample; `mlp_matmuls` = [(in, out), ...] of the MLP linears."""
    return {
        "attention_linear": matmul_flops(tokens, 3 * dim, dim) + matmul_flops(tokens, dim, dim),
        "attention_scores": 2 * matmul_flops(tokens, tokens, dim),  # Q K^T and A V over all heads
        "mlp": sum(matmul_flops(tokens, o, i) for i, o in mlp_matmuls),
        "modulation": matmul_flops(1, n_mod * dim, dim),
    }


def _timestep_flops(dim: int, frequency_dim: int = 256) -> int:
    return matmul_flops(1, dim, frequency_dim) + matmul_flops(1, dim, dim)


def dit_forward_flops(cfg: LightningDiTConfig | SiTREGConfig) -> FlopBreakdown:
    """Forward FLOPs per sample of a LightningDiT or REG SiT from its config."""
    D, p = cfg.hidden_size, cfg.patch_size
    N = cfg.grid_size**2
    if isinstance(cfg, LightningDiTConfig):
        tokens, H = N, cfg.mlp_hidden
        mlp = [(D, 2 * H), (H, D)] if cfg.use_swiglu else [(D, H), (H, D)]
        n_mod = 4 if cfg.wo_shift else 6
        embed = matmul_flops(N, D, cfg.in_channels * p * p) + _timestep_flops(D)
        heads = matmul_flops(N, p * p * cfg.out_channels, D)
    elif isinstance(cfg, SiTREGConfig):
        tokens, H = N + 1, int(D * cfg.mlp_ratio)  # class token joins the sequence
        mlp, n_mod = [(D, H), (H, D)], 6
        z = cfg.cls_token_dim
        embed = matmul_flops(N, D, cfg.in_channels * p * p) + _timestep_flops(D) + matmul_flops(1, D, z)
        P = cfg.projector_dim
        projectors = sum(
            matmul_flops(tokens, P, D) + matmul_flops(tokens, P, P) + matmul_flops(tokens, zd, P) for zd in cfg.z_dims
        )
        heads = matmul_flops(N, p * p * cfg.in_channels, D) + matmul_flops(1, z, D) + projectors
    else:
        raise TypeError(f"expected a LightningDiTConfig or SiTREGConfig, got {type(cfg).__name__}")
    block = _block_flops(tokens, D, mlp, n_mod)
    return FlopBreakdown(
        embed=embed,
        attention_linear=cfg.depth * block["attention_linear"],
        attention_scores=cfg.depth * block["attention_scores"],
        mlp=cfg.depth * block["mlp"],
        modulation=cfg.depth * block["modulation"] + matmul_flops(1, 2 * D, D),  # + final adaLN
        heads=heads,
    )


def dit_train_flops_per_image(cfg: LightningDiTConfig | SiTREGConfig) -> int:
    """Model FLOPs of one trained image: `3 x` the forward (activation recomputation excluded)."""
    return TRAIN_FLOPS_MULTIPLIER * dit_forward_flops(cfg).total


def dit_sample_flops_per_image(cfg: LightningDiTConfig | SiTREGConfig, num_evals: int, cfg_doubling: bool) -> int:
    """Sampling FLOPs per image: one forward per network evaluation, doubled under CFG."""
    return dit_forward_flops(cfg).total * num_evals * (2 if cfg_doubling else 1)


# ------------------------------------------------------------------ measured counts
_CPU_SDPA_REGISTERED = False


def register_cpu_sdpa_flops() -> None:
    """Teach `FlopCounterMode` the CPU flash-attention kernels (idempotent).

    PyTorch registers formulas for the CUDA SDPA kernels only; on CPU `scaled_dot_product_attention`
    runs `aten._scaled_dot_product_flash_attention_for_cpu`, which would count as 0 FLOPs.
    """
    global _CPU_SDPA_REGISTERED
    if _CPU_SDPA_REGISTERED:
        return
    aten = torch.ops.aten
    fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is not None and fwd not in flop_counter.flop_registry:

        @flop_counter.register_flop_formula(fwd)
        def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    if bwd is not None and bwd not in flop_counter.flop_registry:

        @flop_counter.register_flop_formula(bwd)
        def _cpu_sdpa_backward(
            grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
        ) -> int:
            return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

    _CPU_SDPA_REGISTERED = True


def count_flops(fn: Callable[[], object]) -> int:
    """Total FLOPs `FlopCounterMode` sees while running `fn()` (forward and any backward inside it)."""
    register_cpu_sdpa_flops()
    with flop_counter.FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())
