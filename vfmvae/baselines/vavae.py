"""The calling conventions of LightningDiT's ``tokenizer/vavae.py`` (``VA_VAE``), on our `KLAutoencoder`.

- ``img_transform``: ADM ``center_crop_arr`` to the image size, ``ToTensor``, ``Normalize(0.5, 0.5)``. Ours is
  the project's ``adm_center`` crop (`datamodules.crops.adm_center_crop`, the crop of the latent cache) followed
  by `vfmvae.codec.uint8_to_unit`; the tokenizer maps [0, 1] to [-1, 1] itself.
- ``encode_images``: **samples** the posterior, with eps drawn by ``torch.randn(shape)`` on the CPU global RNG
  and moved to the device, so a seed gives the same latent on CPU and CUDA (`encode_images` below).
- ``decode_to_images``: ``clamp(127.5 x + 128, 0, 255)`` truncated to uint8, channels last
  (= ``vfmvae.codec.to_uint8(x, "half_up")``; `decode_to_images` below).

The diffusion pipeline does not use these: the latent cache stores the posterior moments and the data module
samples (docs/design.md, "Latent normalisation"). They exist to compare with the official tools number for number.
"""

from __future__ import annotations

import torch

from vfmvae.codec import to_uint8

from .autoencoder import KLAutoencoder

__all__ = ["sample_cpu_rng", "encode_images", "decode_to_images"]


def sample_cpu_rng(posterior) -> torch.Tensor:
    """``mean + std * eps`` with ``eps = torch.randn(mean.shape)`` from the CPU global RNG (the official
    ``DiagonalGaussianDistribution.sample``), whatever device the posterior lives on."""
    eps = torch.randn(posterior.mean.shape)
    return posterior.sample(eps.to(posterior.mean.device))


@torch.no_grad()
def encode_images(model: KLAutoencoder, images_01: torch.Tensor) -> torch.Tensor:
    """Official ``VA_VAE.encode_images``: a posterior **sample** ``(B, C, H/f, W/f)`` for images in [0, 1]."""
    return sample_cpu_rng(model.encode(images_01))


@torch.no_grad()
def decode_to_images(model: KLAutoencoder, z: torch.Tensor) -> torch.Tensor:
    """Official ``VA_VAE.decode_to_images``: latents -> ``uint8 (B, H, W, 3)`` on the CPU (round half up)."""
    return to_uint8(model.decode(z), "half_up").permute(0, 2, 3, 1).cpu()
