"""Benchmark cases (one table row each) and the named suites that `make bench` and the GPU script run.

A `BenchCase` is data: which workload (`kind`), which architecture preset (+ shape overrides), and
the runtime switches the issue asks for: `torch.compile` of the repeated blocks, bf16 autocast vs
fp32, activation checkpointing, fused AdamW. Suites:

| suite | where | what |
|---|---|---|
| `cpu` | `make bench` (< 5 min on 2 cores) | tiny (`debug`) and small DiTs, tiny tokenizer, sampling, caching, CKNNA |
| `gpu` | `benchmarks/gpu_check.sh` | LightningDiT-XL/1, REG SiT-XL/1 bf16 +/- compile, tokenizer at 256 px |
| `gpu-sampling` | `benchmarks/gpu_check.sh` | sampling XL nets at the paper protocol's fp32 (+TF32) vs opt-in bf16 (`vfmvae sample --precision`) |
| `gpu-extra` | GPU, when minutes are left | sampling at 250 steps, latent caching, CKNNA n = 10,000, fp32 / checkpointing rows |
| `smoke` | `tests/test_bench.py` | the smallest size of each DiT workload, seconds |
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

KINDS = ("dit_train", "tokenizer_train", "sampling", "latent_cache", "cknna")
DTYPES = ("fp32", "tf32", "bf16")


@dataclass
class BenchCase:
    """One measured configuration. `name` is the table row label (unique within a suite)."""

    name: str
    kind: str
    family: str = "lightningdit"  # registered diffusion network family for dit_train / sampling
    preset: str = "debug"  # architecture preset (DiT or tokenizer)
    overrides: dict = field(default_factory=dict)  # architecture shape overrides of the preset
    batch_size: int = 8
    dtype: str = "fp32"  # "bf16" = autocast to bfloat16 around the forward (weights stay fp32); "tf32" = fp32 + TF32
    compile: bool = False  # torch.compile each transformer block (`compile_blocks`)
    activation_checkpointing: bool = False
    fused_optimizer: bool = False  # AdamW(fused=True); otherwise foreach
    channels_last: bool = False  # tokenizer: decoder, LPIPS, D heads and images in channels-last memory format
    ema: bool = True  # include the EMA update in the training step (it is part of every real step)
    transport: str = "lightningdit"  # TRANSPORT_PRESETS key of dit_train (the family's own convention)
    reg_target: str = "cached"  # REG: "cached" DINOv2 targets, or "online" DINOv2-B forward per step
    discriminator: str = "debug"  # tokenizer: projected-D preset ("dino-vits16" at 256 px)
    loss_preset: str = "debug"  # tokenizer: TOKENIZER_LOSS_PRESETS key
    num_steps: int = 250  # sampling grid points
    sampler: str = "lightningdit-cfg"  # SAMPLER_PRESETS key
    n: int = 10_000  # CKNNA samples
    feature_dims: tuple[int, int] = (1024, 768)  # CKNNA feature sizes (SigLIP2-L vs DINOv2-B)
    warmup: int = 1
    iters: int = 2

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"BenchCase {self.name!r}: unknown kind {self.kind!r}; choose from {KINDS}")
        from vfmvae.dit import network_families

        if self.family not in network_families():
            raise ValueError(
                f"BenchCase {self.name!r}: unknown family {self.family!r}; choose from {network_families()}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"BenchCase {self.name!r}: dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.reg_target not in ("cached", "online"):
            raise ValueError(f"BenchCase {self.name!r}: reg_target must be 'cached' or 'online'")
        if self.batch_size < 1 or self.iters < 1 or self.warmup < 0:
            raise ValueError(f"BenchCase {self.name!r}: need batch_size >= 1, iters >= 1, warmup >= 0")

    def replace(self, **changes) -> BenchCase:
        return dataclasses.replace(self, **changes)

    def switches(self) -> str:
        """Short description of the runtime switches for the table."""
        parts = [self.dtype]
        parts += ["compile"] if self.compile else []
        parts += ["ckpt"] if self.activation_checkpointing else []
        parts += ["fused"] if self.fused_optimizer else []
        parts += ["channels-last"] if self.channels_last else []
        parts += ["online-target"] if self.kind == "dit_train" and self.reg_target == "online" else []
        return "+".join(parts)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# "small" CPU DiTs: the paper's token count (32 x 16 x 16 latent, patch 1 = 256 tokens) at a width and
# depth a 2-core CPU trains in seconds.
SMALL_DIT = {"hidden_size": 256, "depth": 4, "num_heads": 4}
SMALL_REG = {**SMALL_DIT, "encoder_depth": 2, "projector_dim": 512}


def _cpu_suite() -> list[BenchCase]:
    ldit = BenchCase("LightningDiT debug", "dit_train", "lightningdit", "debug", batch_size=16, iters=4)
    reg = BenchCase("REG SiT debug", "dit_train", "reg", "debug", batch_size=16, iters=4, transport="reg")
    ldit_s = BenchCase("LightningDiT small", "dit_train", "lightningdit", "LightningDiT-XL/1", SMALL_DIT, 8, iters=1)
    reg_s = BenchCase("REG SiT small", "dit_train", "reg", "SiT-XL/1-REG", SMALL_REG, 8, iters=1, transport="reg")
    return [
        ldit,
        ldit.replace(name="LightningDiT debug fused", fused_optimizer=True),
        ldit.replace(name="LightningDiT debug ckpt", activation_checkpointing=True),
        reg,
        ldit_s,
        reg_s,
        BenchCase("Tokenizer debug 64px", "tokenizer_train", preset="debug", batch_size=4, iters=1),
        BenchCase("Sampling LightningDiT debug", "sampling", "lightningdit", "debug", batch_size=8, warmup=0, iters=1),
        BenchCase("Latent cache debug 64px", "latent_cache", preset="debug", batch_size=8, iters=2),
        BenchCase("CKNNA n=10000", "cknna", n=10_000, warmup=0, iters=1),
    ]


# The GPU training rows: the paper's XL networks and the 256 px tokenizer, bf16 autocast, fused AdamW.
_LDIT_XL = BenchCase(
    "LightningDiT-XL/1",
    "dit_train",
    "lightningdit",
    "LightningDiT-XL/1",
    batch_size=32,
    dtype="bf16",
    fused_optimizer=True,
    warmup=3,
    iters=10,
)
_REG_XL = _LDIT_XL.replace(name="REG SiT-XL/1", family="reg", preset="SiT-XL/1-REG", transport="reg")
_TOKENIZER_256 = BenchCase(
    "Tokenizer 256px (stage 0)",
    "tokenizer_train",
    preset="vfmvae-f16d32-siglip2",
    batch_size=8,
    dtype="bf16",
    discriminator="dino-vits16",
    loss_preset="stage0",
    fused_optimizer=True,
    warmup=2,
    iters=5,
)


def _gpu_suite() -> list[BenchCase]:
    return [
        _LDIT_XL,
        _LDIT_XL.replace(name="LightningDiT-XL/1 compiled", compile=True, warmup=4),
        _REG_XL,
        _REG_XL.replace(name="REG SiT-XL/1 compiled", compile=True, warmup=4),
        _TOKENIZER_256,
    ]


def _gpu_extra_suite() -> list[BenchCase]:
    ldit = _LDIT_XL
    return [
        ldit.replace(name="LightningDiT-XL/1 compiled ckpt", compile=True, activation_checkpointing=True, warmup=4),
        ldit.replace(name="LightningDiT-XL/1 fp32", dtype="fp32", iters=5),
        _TOKENIZER_256.replace(name="Tokenizer 256px (stage 0) channels-last", channels_last=True),
        _REG_XL.replace(name="REG SiT-XL/1 online DINOv2", reg_target="online"),
        BenchCase(
            "Sampling LightningDiT-XL/1 CFG",
            "sampling",
            "lightningdit",
            "LightningDiT-XL/1",
            batch_size=64,
            dtype="bf16",
            warmup=0,
            iters=1,
        ),
        BenchCase(
            "Sampling REG SiT-XL/1 CFG",
            "sampling",
            "reg",
            "SiT-XL/1-REG",
            batch_size=64,
            dtype="bf16",
            sampler="reg-cfg",
            warmup=0,
            iters=1,
        ),
        BenchCase(
            "Latent cache 256px", "latent_cache", preset="vfmvae-f16d32-siglip2", batch_size=64, warmup=1, iters=3
        ),
        BenchCase("CKNNA n=10000", "cknna", n=10_000, warmup=1, iters=1),
    ]


def _gpu_sampling_suite() -> list[BenchCase]:
    """`vfmvae sample --precision fp32` (the paper protocol: fp32 with TF32, as the official samplers) against
    ``--precision bf16``: one batch of 64 at 50 grid points per network (the per-evaluation cost is what differs)."""
    ldit = BenchCase(
        "Sampling LightningDiT-XL/1 CFG fp32+TF32",
        "sampling",
        "lightningdit",
        "LightningDiT-XL/1",
        batch_size=64,
        dtype="tf32",
        num_steps=50,
        warmup=1,
        iters=1,
    )
    reg = ldit.replace(
        name="Sampling REG SiT-XL/1 CFG fp32+TF32", family="reg", preset="SiT-XL/1-REG", sampler="reg-cfg"
    )
    return [
        ldit,
        ldit.replace(name="Sampling LightningDiT-XL/1 CFG bf16", dtype="bf16"),
        reg,
        reg.replace(name="Sampling REG SiT-XL/1 CFG bf16", dtype="bf16"),
    ]


def _smoke_suite() -> list[BenchCase]:
    return [
        BenchCase("LightningDiT debug", "dit_train", "lightningdit", "debug", batch_size=2, warmup=1, iters=1),
        BenchCase("REG SiT debug", "dit_train", "reg", "debug", batch_size=2, warmup=1, iters=1, transport="reg"),
    ]


SUITES: dict[str, list[BenchCase]] = {
    "cpu": _cpu_suite(),
    "gpu": _gpu_suite(),
    "gpu-sampling": _gpu_sampling_suite(),
    "gpu-extra": _gpu_extra_suite(),
    "smoke": _smoke_suite(),
}


def get_suite(name: str) -> list[BenchCase]:
    if name not in SUITES:
        raise KeyError(f"unknown benchmark suite {name!r}; choose from {sorted(SUITES)}")
    return [c.replace() for c in SUITES[name]]
