"""`VFMVAELatentDiffusionPipeline`: class-conditional sampling with a diffusers scheduler (paper Sec. 4.1 setup).

Components: `vae` (`AutoencoderKLVFMVAE`), `transformer` (`LightningDiTTransformer2DModel`, a velocity network
`transformer(x, t, y)` with t = 1 at data; a bare `vfmvae.dit.LightningDiT` is wrapped on construction) and
`scheduler` (`FlowMatchEulerDiscreteScheduler`). All three save and load with diffusers' folder machinery.

Time conventions (docs/design.md, "Time conventions"). diffusers' flow-matching schedulers use
`x_sigma = (1 - sigma) x_data + sigma eps` with sigma = 1 at noise and expect the model output `d x / d sigma
= eps - x_data`. LightningDiT uses `x_t = t x_data + (1 - t) eps` with t = 1 at data and predicts
`d x / d t = x_data - eps`. So the pipeline hands the network `t = 1 - sigma` and the scheduler `-velocity`;
an Euler step `x + (sigma' - sigma)(-v) = x + (t' - t) v` is then our Euler step.

Grids. Our ODE sampler (`vfmvae.transport.ode_time_grid`) uses `n` grid points `t_i = shift(i / (n - 1))` with
LightningDiT's shift `t' = s t / (1 + (s - 1) t)`, s = 0.3. In sigma = 1 - t this is diffusers' shift
`sigma' = S sigma / (1 + (S - 1) sigma)` with S = 1 / s, applied to `sigma_i = 1 - i / (n - 1)`. Hence
`lightningdit_scheduler(0.3)` (S = 1 / 0.3) plus `flow_sigmas(n - 1)` reproduces the grid, and
`num_inference_steps = n - 1` (the paper's 250 grid points are 249 steps). diffusers' default sigmas
(`linspace(1, 1/1000, N)` then 0) are a different grid, so the pipeline always passes `flow_sigmas`.

Guidance is our `vfmvae.transport.ClassifierFreeGuidance` (interval and channel subset as in the paper's
LightningDiT runs), judged on the network's own time t.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from vfmvae.codec import signed_to_unit, to_uint8
from vfmvae.dit import LightningDiT
from vfmvae.transport import ClassifierFreeGuidance, GuidanceInterval

from .diffusers_transformer import LightningDiTTransformer2DModel
from .diffusers_vae import AutoencoderKLVFMVAE

__all__ = ["VFMVAELatentDiffusionPipeline", "lightningdit_scheduler", "flow_sigmas", "OUTPUT_TYPES"]

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def lightningdit_scheduler(timestep_shift: float | None = 0.3) -> FlowMatchEulerDiscreteScheduler:
    """The diffusers scheduler of LightningDiT's Euler sampler: `shift = 1 / timestep_shift` (see module docstring).

    `timestep_shift` is LightningDiT's (data-at-one) shift; None, 0 or 1 mean no shift, as in `shift_time`.
    """
    if timestep_shift is None or timestep_shift in (0, 1):
        return FlowMatchEulerDiscreteScheduler(shift=1.0)
    if timestep_shift < 0:
        raise ValueError(f"timestep_shift must be positive (or 0/None for none), got {timestep_shift}")
    return FlowMatchEulerDiscreteScheduler(shift=1.0 / timestep_shift)


def flow_sigmas(num_inference_steps: int) -> list[float]:
    """Unshifted sigmas `1 - i / N`, i = 0..N-1 (the scheduler appends the final 0): `N` Euler steps that span
    the whole path, like `ode_time_grid(N + 1)`. float32, as `ode_time_grid` builds its grid."""
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    grid = np.linspace(0.0, 1.0, num_inference_steps + 1, dtype=np.float32)
    return (1.0 - grid[:-1]).tolist()


class VFMVAELatentDiffusionPipeline(DiffusionPipeline):
    """`pipe(class_labels, num_inference_steps=249, guidance_scale=1.0, generator=..., output_type="pil")`.

    The network samples normalised latents `x` (B, C, s, s), s = `transformer.network_config.input_size`; images are
    `vae.decode(vae.denormalize_latents(x))`. `output_type`: "pil" (8-bit by truncation, the paper protocol,
    `vfmvae.codec.to_uint8(..., "truncate")`), "np" / "pt" (float in [0, 1], NHWC / NCHW), "latent" (`x`).
    """

    model_cpu_offload_seq = "transformer->vae"

    def __init__(
        self,
        vae: AutoencoderKLVFMVAE,
        transformer: LightningDiTTransformer2DModel | LightningDiT,
        scheduler: FlowMatchEulerDiscreteScheduler,
    ):
        super().__init__()
        if isinstance(transformer, LightningDiT):
            transformer = LightningDiTTransformer2DModel(network=transformer)
        if not isinstance(vae, AutoencoderKLVFMVAE):
            raise TypeError(f"vae must be an AutoencoderKLVFMVAE, got {type(vae).__name__}")
        if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
            raise TypeError(
                f"scheduler must be a FlowMatchEulerDiscreteScheduler (rectified-flow Euler), got "
                f"{type(scheduler).__name__}; build one with lightningdit_scheduler()"
            )
        if scheduler.config.invert_sigmas or scheduler.config.use_dynamic_shifting:
            raise ValueError(
                "the scheduler must run sigma from 1 to 0 without dynamic shifting (see docs/diffusers.md)"
            )
        if not isinstance(transformer, LightningDiTTransformer2DModel):
            raise TypeError(f"transformer must be a LightningDiT(Transformer2DModel), got {type(transformer).__name__}")
        net = transformer.network_config
        if net.in_channels != vae.config.latent_channels:
            raise ValueError(
                f"transformer takes {net.in_channels} latent channels, the vae has {vae.config.latent_channels}"
            )
        self.register_modules(vae=vae, transformer=transformer, scheduler=scheduler)

    def _labels(self, class_labels, device: torch.device) -> torch.Tensor:
        labels = torch.as_tensor([class_labels] if isinstance(class_labels, int) else class_labels, device=device)
        if labels.ndim != 1 or labels.dtype not in (torch.int32, torch.int64) or labels.numel() == 0:
            raise ValueError(
                f"class_labels must be an int or a non-empty 1-D list/tensor of ints, got {class_labels!r}"
            )
        n = self.transformer.network_config.num_classes
        if bool(((labels < 0) | (labels >= n)).any()):
            raise ValueError(f"class_labels must lie in [0, {n}), got {labels.tolist()}")
        return labels.long()

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | list[int] | torch.Tensor,
        num_inference_steps: int = 249,
        guidance_scale: float = 1.0,
        guidance_interval: tuple[float, float] = (0.0, 1.0),
        cfg_channels: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """Sample one image per class label.

        Args:
            class_labels: ImageNet class ids, `(B,)`.
            num_inference_steps: Euler steps (= grid points - 1; the paper's LightningDiT sampler: 249).
            guidance_scale: CFG scale; <= 1 disables guidance (paper: 1.0 without, 4.0 / 6.0 with CFG).
            guidance_interval: `(low, high)` in the network's time (t = 1 is data) where CFG applies
                (paper: `(0.125, 1.0)`).
            cfg_channels: guide only the first k latent channels (paper's published numbers: 3); None = all.
            generator: for the initial noise `(B, C, s, s)` (diffusers' `randn_tensor`).
            latents: the initial noise instead of drawing it.
            output_type: one of `OUTPUT_TYPES`.
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if self.transformer.network.training:
            raise RuntimeError(
                "the transformer is in train mode, where LightningDiT drops class labels at random; call .eval()"
            )
        device = self._execution_device
        y = self._labels(class_labels, device)
        net = self.transformer.network_config
        shape = (y.numel(), net.in_channels, net.input_size, net.input_size)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        latents = latents.to(device)

        velocity = self.transformer
        if guidance_scale > 1.0:
            velocity = ClassifierFreeGuidance(
                self.transformer,
                guidance_scale,
                convention="data_at_one",
                interval=GuidanceInterval(*guidance_interval, "data_at_one"),
                cfg_channels=cfg_channels,
                null_class=net.num_classes,
            )
        if "sigmas" in inspect.signature(self.scheduler.set_timesteps).parameters:
            self.scheduler.set_timesteps(sigmas=flow_sigmas(num_inference_steps), device=device)
        else:
            self.scheduler.set_timesteps(num_inference_steps, device=device)
        train_steps = self.scheduler.config.num_train_timesteps
        for timestep in self.progress_bar(self.scheduler.timesteps):
            t = (1.0 - timestep / train_steps).to(latents.dtype).expand(shape[0])  # sigma -> data-at-one time
            v = velocity(latents, t, y)
            latents = self.scheduler.step(-v, timestep, latents, return_dict=False)[0]

        if output_type == "latent":
            images = latents
        else:
            decoded = self.vae.decode(self.vae.denormalize_latents(latents.to(self.vae.dtype))).sample
            images = self._postprocess(decoded, output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def _postprocess(self, images: torch.Tensor, output_type: str):
        """Decoder output in [-1, 1] -> the requested type (docs/design.md, "Value ranges and pixel conversion")."""
        if output_type == "pil":
            from PIL import Image

            # Not diffusers' numpy_to_pil, which rounds: the paper's tools truncate.
            return [Image.fromarray(p) for p in to_uint8(images, "truncate").permute(0, 2, 3, 1).cpu().numpy()]
        unit = signed_to_unit(images.float()).clamp(0, 1)
        return unit if output_type == "pt" else unit.permute(0, 2, 3, 1).cpu().numpy()
