"""Inference workloads: sampling, latent caching and CKNNA.

* Sampling (docs/design.md, "Sampling and guidance"): one batch of `num_steps`-point sampling through
  `vfmvae.transport.sample` with the case's sampler preset (LightningDiT: Euler ODE + CFG on channels
  0-2 where t >= 0.125; REG: Euler-Maruyama SDE + CFG where t <= 0.8). Latents only: decoding is
  one tokenizer decoder pass per image, negligible next to 2 x 249 DiT evaluations.
  FLOPs: analytic forward FLOPs x the batch rows the network actually saw (counted while running,
  so CFG doubling only inside the guidance interval is accounted for exactly).
* Latent caching: `encode` of each image and its horizontal flip in fp32 with
  autocast off, as `lightning_modules.latent_cache.LatentCacheModule.predict_step`.
  FLOPs by `FlopCounterMode` over the first (warm-up) batch.
* CKNNA (`vfmvae.metrics.cknna`): n samples of two random feature sets (SigLIP2-L 1024-d vs
  DINOv2-B 768-d), topk 10. Reported as samples/s; no MFU (kernel building is memory bound).
"""

from __future__ import annotations

import torch

from benchmarks.cases import BenchCase
from benchmarks.dit_step import build_dit
from benchmarks.flops import dit_forward_flops
from benchmarks.workload import Workload, autocast, count_first_call


class _RowCounter:
    """Wraps a network call and counts the batch rows it processes (Python ints: no host sync)."""

    def __init__(self, fn):
        self.fn, self.rows, self.calls = fn, 0, 0

    def __call__(self, x, *args, **kwargs):
        self.rows += (x[0] if isinstance(x, tuple) else x).shape[0]
        self.calls += 1
        return self.fn(x, *args, **kwargs)


def build_sampling(case: BenchCase, device: torch.device) -> Workload:
    """`vfmvae.transport.sample_latents`'s path: the network's initial state and velocity, its null condition."""
    from vfmvae.transport import SAMPLER_PRESETS, sample

    if case.sampler not in SAMPLER_PRESETS:
        raise ValueError(f"unknown sampler preset {case.sampler!r}; choose from {sorted(SAMPLER_PRESETS)}")
    config = SAMPLER_PRESETS[case.sampler].replace(num_steps=case.num_steps)
    model = build_dit(case, device).eval().requires_grad_(False)
    counter = _RowCounter(model.velocity)
    B = case.batch_size
    gen = torch.Generator().manual_seed(0)
    noise = model.initial_state(B, gen, "cpu")
    noise = tuple(c.to(device) for c in noise) if isinstance(noise, tuple) else noise.to(device)
    y = model.condition.draw("random", B, generator=gen).to(device)
    steps = {"n": 0}

    def step():
        steps["n"] += 1
        with torch.no_grad(), autocast(device, case.dtype):
            return sample(config, counter, noise, y, null_condition=model.condition.null_like)

    per_row = dit_forward_flops(model.config).total

    def flops_per_step() -> float:  # resolved after timing, from the rows actually evaluated
        return per_row * counter.rows / max(steps["n"], 1)

    notes = [f"{case.sampler}, {case.num_steps} grid points, latents only (no decode)"]
    return Workload(step, B, flops_per_step, "analytic forward x evaluated rows", notes)


def build_latent_cache(case: BenchCase, device: torch.device) -> Workload:
    from vfmvae.codec import uint8_to_unit
    from vfmvae.tokenizer import VFMVAE, get_config

    cfg = get_config(case.preset, **case.overrides)
    vfm_dtype = "bfloat16" if case.dtype == "bf16" else "float32"
    model = VFMVAE(cfg, vfm_config={"compute_dtype": vfm_dtype}).to(device).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    side = cfg.img_resolution
    images = torch.randint(0, 256, (case.batch_size, 3, side, side), generator=gen, dtype=torch.uint8).to(device)

    def step():
        both = torch.cat([images, images.flip(-1)])
        with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
            posterior = model.encode(uint8_to_unit(both))
        return posterior.mean, posterior.logvar

    step, flops = count_first_call(step)
    notes = [f"{side} px, image + flip, fp32 head (VFM in {vfm_dtype}), no disk I/O"]
    return Workload(step, case.batch_size, flops, "FlopCounterMode over one batch", notes)


def build_cknna(case: BenchCase, device: torch.device) -> Workload:
    from vfmvae.metrics import cknna

    gen = torch.Generator().manual_seed(0)
    da, db = case.feature_dims
    a = torch.randn(case.n, da, generator=gen).to(device)
    b = torch.randn(case.n, db, generator=gen).to(device)

    def step():
        return cknna(a, b, topk=10)

    return Workload(step, case.n, None, "not counted", [f"n={case.n}, {da}-d vs {db}-d, topk 10"])
