"""The models `vfmvae se-cknna` measures, built from ``KIND:PRESET[@WEIGHTS]`` specs (docs/design.md, "SE-CKNNA";
docs/design.md, "SE-CKNNA").

* ``vfm:<vfmvae.vfm preset>``: a frozen VFM with the DINOv2 or SigLIP extractor rules by family;
* ``tokenizer:<vfmvae.tokenizer preset>`` (built by the script: its ``official`` loading is a CLI matter);
* ``<registered diffusion family>:<preset>`` (``lightningdit:...``, ``reg:...``): any
  `vfmvae.dit.interface.DiffusionNetwork`; PRESET ``official`` loads a released file through the family's
  converter. Its latents come from a tokenizer (:func:`encode_latents`), its class token, when its state
  carries one, from a DINOv2 (:func:`image_class_tokens`, the official bilinear-224 rule).

Files given here are loaded with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from vfmvae.codec import uint8_to_unit
from vfmvae.dit.registry import network_families
from vfmvae.utils.progress import progress

from .se_cknna import DINOv2SEExtractor, SigLIPSEExtractor
from .se_probe import probe_class_tokens
from .se_transforms import load_image

__all__ = [
    "build_dit",
    "build_vfm_extractor",
    "encode_latents",
    "image_class_tokens",
    "latent_stats",
    "model_kinds",
    "parse_spec",
]


def model_kinds() -> tuple[str, ...]:
    """``("vfm", "tokenizer", <every registered diffusion family>)``."""
    return ("vfm", "tokenizer") + network_families()


def parse_spec(spec: str, default_kind: str | None = None) -> tuple[str, str, str | None]:
    """`KIND:PRESET[@WEIGHTS]` -> (kind, preset, weights or None)."""
    kinds = model_kinds()
    kind, sep, rest = spec.partition(":")
    if not sep:
        if default_kind is None:
            raise ValueError(f"model spec {spec!r} must look like KIND:PRESET[@WEIGHTS] with KIND in {kinds}")
        kind, rest = default_kind, spec
    if kind not in kinds:
        raise ValueError(f"unknown model kind {kind!r} in {spec!r}; known: {kinds}")
    preset, _, weights = rest.partition("@")
    if not preset:
        raise ValueError(f"model spec {spec!r} has no preset name")
    if weights and not Path(weights).exists():
        raise FileNotFoundError(f"weights for {spec!r} not found: {weights}")
    return kind, preset, weights or None


def build_vfm_extractor(preset: str, weights: str | None, device: str, config: dict | None = None):
    """``(extractor, vfm)``: the SE extractor of a DINOv2 / SigLIP VFM (final tokens after the last norm), the
    VFM built as the official extractors run it (`vfmvae.vfm.build_se_cknna_reference`: fp32, DINOv2 position
    table resampled by timm's rule)."""
    from vfmvae.vfm import build_se_cknna_reference

    vfm = build_se_cknna_reference(preset, pretrained=weights, config=config).to(device)
    token_fn = lambda x: vfm(x, [-1])[0]  # final tokens after the last norm, CLS/registers removed
    family = vfm.config.family
    if family == "dinov2":
        return DINOv2SEExtractor(token_fn, patch_size=vfm.patch_size, device=device), vfm
    if family == "siglip":
        return SigLIPSEExtractor(token_fn, device=device), vfm
    raise ValueError(f"SE-CKNNA has pipelines for DINOv2 and SigLIP VFMs only, not {family!r} ({preset})")


def build_dit(family: str, preset: str, weights: str | None, official_kwargs: dict[str, Any], device: str):
    """A registered diffusion network in eval mode: a preset (+ a state dict, ``ema`` entry preferred) or
    ``official`` + a released file converted with ``official_kwargs``."""
    from vfmvae.dit import build_diffusion_network, load_official_network, unwrap_checkpoint

    if preset == "official":
        if not weights:
            raise ValueError(f"{family}:official needs @CHECKPOINT")
        model = load_official_network(family, weights, official_kwargs)
    else:
        model = build_diffusion_network(family, preset)
        if weights:
            model.load_state_dict(unwrap_checkpoint(weights, prefer="ema"), strict=True)
    return model.to(device).eval()


def _load_batch(paths, resolution: int, device) -> torch.Tensor:
    images = np.stack([load_image(p, resolution) for p in paths])
    return torch.from_numpy(images).to(device).permute(0, 3, 1, 2).contiguous()  # uint8 (B, 3, H, W)


def encode_latents(tokenizer, paths, resolution: int, device, batch_size: int, seed: int) -> torch.Tensor:
    """Posterior samples z (official: the diffusion prefetch samples, it never takes the mode)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    zs = []
    starts = range(0, len(paths), batch_size)
    for start in progress(starts, total=len(starts), desc="tokenizer latents"):
        x = uint8_to_unit(_load_batch(paths[start : start + batch_size], resolution, device))
        with torch.no_grad():
            zs.append(tokenizer.encode(x).sample(generator=gen).cpu())
    return torch.cat(zs)


def latent_stats(path: str | None, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, std)`` ``(1, C, 1, 1)`` from a ``latents_stats.pt``, else per-channel statistics of ``latents``."""
    if path is None:
        return latents.mean((0, 2, 3), keepdim=True), latents.std((0, 2, 3), keepdim=True)
    from vfmvae.utils.safe_load import load_user_file

    stats = load_user_file(path, what="latent statistics file")
    mean, std = torch.as_tensor(stats["mean"]).float(), torch.as_tensor(stats["std"]).float()
    return mean.reshape(1, -1, 1, 1), std.reshape(1, -1, 1, 1)


def image_class_tokens(preset, weights, config, paths, resolution, device, batch_size) -> torch.Tensor:
    """A class token per image for networks that carry one (REG): DINOv2 ``x_norm_clstoken`` of the image
    resized to 224 px bilinear without antialias (`vfmvae.metrics.se_probe.probe_class_tokens`)."""
    from vfmvae.vfm import build_vfm

    vfm = build_vfm(preset, pretrained=weights, config={"compute_dtype": "float32", **(config or {})}).to(device)
    out = []
    starts = range(0, len(paths), batch_size)
    for start in progress(starts, total=len(starts), desc="class tokens"):
        images = _load_batch(paths[start : start + batch_size], resolution, device)
        out.append(probe_class_tokens(vfm, images, size=224).cpu())
    return torch.cat(out)
