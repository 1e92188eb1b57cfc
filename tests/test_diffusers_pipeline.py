"""End to end: a diffusers scheduler loop with VFM-VAE and a tiny LightningDiT (vfmvae/integrations/diffusers_pipeline.py).

The real check: diffusers' `FlowMatchEulerDiscreteScheduler`, driven by the pipeline, reproduces our own Euler
sampler (`vfmvae.transport.sample` with the LightningDiT presets) from the same noise, with and without CFG.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from vfmvae.codec import LatentCodec, LatentNormalizer, to_uint8
from vfmvae.dit import build_lightningdit
from vfmvae.integrations import AutoencoderKLVFMVAE, VFMVAELatentDiffusionPipeline, flow_sigmas, lightningdit_scheduler
from vfmvae.tokenizer import VFMVAE
from vfmvae.transport import SAMPLER_PRESETS, ode_time_grid, sample

STEPS = 6  # Euler steps = grid points - 1
LABELS = [3, 917]


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    tokenizer = VFMVAE("debug", decoder_only=True).eval()
    stats = {"mean": 0.3 * torch.randn(1, 8, 1, 1), "std": 0.5 + torch.rand(1, 8, 1, 1)}
    dit = build_lightningdit("debug", input_size=4).eval()
    with torch.no_grad():  # adaLN-Zero starts at velocity 0: give every weight a value so the test can fail
        for p in dit.parameters():
            p.normal_(0.0, 0.2)
    vae = AutoencoderKLVFMVAE.from_tokenizer(tokenizer, latents_stats=stats)
    pipe = VFMVAELatentDiffusionPipeline(vae=vae, transformer=dit, scheduler=lightningdit_scheduler(0.3))
    pipe.set_progress_bar_config(disable=True)
    return pipe, tokenizer, stats, dit


def _noise(seed: int = 0) -> torch.Tensor:
    return torch.randn(len(LABELS), 8, 4, 4, generator=torch.Generator().manual_seed(seed))


def test_scheduler_loop_reproduces_our_euler_sampler(parts):
    pipe, _, _, dit = parts
    noise, y = _noise(), torch.tensor(LABELS)
    cases = [
        ("lightningdit", {}),
        ("lightningdit-cfg", dict(guidance_scale=4.0, guidance_interval=(0.125, 1.0), cfg_channels=3)),
    ]
    for preset, guidance in cases:
        ours = sample(SAMPLER_PRESETS[preset].replace(num_steps=STEPS + 1), dit, noise, y)
        got = pipe(LABELS, num_inference_steps=STEPS, latents=noise, output_type="latent", **guidance).images
        assert (ours - noise).abs().max() > 0.3, "the velocity must move the latents for the check to mean anything"
        torch.testing.assert_close(got, ours, atol=2e-5, rtol=0, msg=preset)
    # The scheduler's sigmas are our shifted grid read backwards in time.
    grid = ode_time_grid(STEPS + 1, shift=0.3)
    torch.testing.assert_close(pipe.scheduler.sigmas, 1 - grid, atol=1e-6, rtol=0)

    # Sensitivity: without the shift (diffusers' default shift=1) the same loop lands elsewhere.
    plain = VFMVAELatentDiffusionPipeline(pipe.vae, dit, FlowMatchEulerDiscreteScheduler())
    plain.set_progress_bar_config(disable=True)
    other = plain(LABELS, num_inference_steps=STEPS, latents=noise, output_type="latent").images
    assert (other - ours).abs().max() > 1e-2


def test_pipeline_outputs_decode_with_the_documented_formula(parts):
    pipe, tokenizer, stats, _ = parts

    def run(seed: int, output_type: str):
        return pipe(
            class_labels=LABELS,
            num_inference_steps=3,
            generator=torch.Generator().manual_seed(seed),
            output_type=output_type,
        ).images

    latents = run(0, "latent")
    assert latents.shape == (2, 8, 4, 4)
    images = run(0, "pt")
    assert images.shape == (2, 3, 64, 64) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    decoded = LatentCodec(tokenizer, LatentNormalizer(stats["mean"], stats["std"])).decode_normalized(latents)
    torch.testing.assert_close(images, ((decoded + 1) / 2).clamp(0, 1), atol=1e-6, rtol=0)
    assert torch.equal(run(0, "pt"), images), "same generator seed, same images"
    assert not torch.equal(run(1, "pt"), images)

    pil = run(0, "pil")
    assert len(pil) == 2 and pil[0].size == (64, 64)
    assert torch.equal(torch.from_numpy(np.array(pil[1])).permute(2, 0, 1), to_uint8(decoded[1], "truncate"))
    assert run(0, "np").shape == (2, 64, 64, 3)


def test_pipeline_saves_and_loads_as_a_diffusers_folder(parts, tmp_path):
    pipe = parts[0]
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["vae"] == ["vfmvae.integrations.diffusers_vae", "AutoencoderKLVFMVAE"]
    assert index["transformer"] == ["vfmvae.integrations.diffusers_transformer", "LightningDiTTransformer2DModel"]
    loaded = VFMVAELatentDiffusionPipeline.from_pretrained(tmp_path, local_files_only=True)
    loaded.set_progress_bar_config(disable=True)
    assert not loaded.vae.has_encoder, "a decoder-only vae stays decoder-only"
    assert loaded.scheduler.config.shift == pipe.scheduler.config.shift
    kwargs = dict(class_labels=LABELS, num_inference_steps=3, output_type="pt")
    expected = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images
    assert torch.equal(loaded(generator=torch.Generator().manual_seed(0), **kwargs).images, expected)


def test_bad_arguments_are_one_line_errors(parts):
    pipe, _, _, dit = parts
    with pytest.raises(ValueError, match=r"class_labels must lie in \[0, 1000\)"):
        pipe([1000], num_inference_steps=2)
    with pytest.raises(ValueError, match="output_type"):
        pipe([1], num_inference_steps=2, output_type="png")
    with pytest.raises(ValueError, match="latents must have shape"):
        pipe([1], num_inference_steps=2, latents=torch.zeros(1, 8, 8, 8))
    with pytest.raises(TypeError, match="FlowMatchEulerDiscreteScheduler"):
        VFMVAELatentDiffusionPipeline(pipe.vae, dit, DDIMScheduler())
    with pytest.raises(ValueError, match="latent channels"):
        VFMVAELatentDiffusionPipeline(
            pipe.vae, build_lightningdit("debug", input_size=4, in_channels=4), pipe.scheduler
        )
    with pytest.raises(ValueError, match="num_inference_steps"):
        flow_sigmas(0)
    training = VFMVAELatentDiffusionPipeline(pipe.vae, build_lightningdit("debug", input_size=4), pipe.scheduler)
    with pytest.raises(RuntimeError, match="train mode"):
        training([1], num_inference_steps=2)
