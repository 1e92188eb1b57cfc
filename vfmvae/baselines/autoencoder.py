"""`KLAutoencoder`: the LDM / diffusers KL autoencoder behind the baseline tokenizers VA-VAE and SD-VAE.

    images_01 (B, 3, H, W) --2x-1--> Encoder --> (B, 2 z_channels, H/f, W/f) --quant_conv--> moments
              --DiagonalGaussian--> z (B, latent_channels, H/f, W/f), unscaled
    z --post_quant_conv--> Decoder --> image (B, 3, H, W) in [-1, 1], not clamped

It follows the project's tokenizer conventions (`vfmvae.tokenizer.interface.Tokenizer`), so the latent cache,
the diffusion training and sampling use it exactly like VFM-VAE (paper Table 1 compares the three tokenizers
under the same diffusion training). Weights come from the official files through
`vfmvae.baselines.from_official_vavae` (LDM key names) and `vfmvae.baselines.from_diffusers_autoencoder`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vfmvae.codec import LatentNormalizer, as_unit, unit_to_signed
from vfmvae.tokenizer.interface import TokenizerRecordMixin
from vfmvae.tokenizer.posterior import DiagonalGaussian

from .config import KLAutoencoderConfig, get_baseline_config
from .layers import Downsample, MidBlock, ResBlock, SpatialSelfAttention, Upsample, group_norm

__all__ = ["KLAutoencoder", "KLAutoencoderOutput", "Encoder", "Decoder"]


class Level(nn.Module):
    """One resolution level: residual blocks, each followed by a self-attention when ``attention``, then an
    optional resampling (``Downsample`` in the encoder, ``Upsample`` in the decoder)."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, cfg: KLAutoencoderConfig, attention: bool):
        super().__init__()
        g, eps = cfg.norm_groups, cfg.norm_eps
        widths = [in_channels] + [out_channels] * num_blocks
        self.blocks = nn.ModuleList(ResBlock(widths[j], out_channels, g, eps, cfg.dropout) for j in range(num_blocks))
        self.attns = nn.ModuleList(
            SpatialSelfAttention(out_channels, g, eps) for _ in range(num_blocks if attention else 0)
        )
        self.downsample: Downsample | None = None
        self.upsample: Upsample | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for j, block in enumerate(self.blocks):
            x = block(x)
            if len(self.attns):
                x = self.attns[j](x)
        if self.downsample is not None:
            x = self.downsample(x)
        if self.upsample is not None:
            x = self.upsample(x)
        return x


class Encoder(nn.Module):
    """``(B, in_channels, H, W)`` in [-1, 1] -> ``(B, 2 z_channels, H/f, W/f)`` (mean and logvar before quant_conv)."""

    def __init__(self, cfg: KLAutoencoderConfig):
        super().__init__()
        n, ch = len(cfg.channels), cfg.channels
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.stem_channels, 3, padding=1)
        self.levels = nn.ModuleList()
        width = cfg.stem_channels
        for i in range(n):
            level = Level(width, ch[i], cfg.num_res_blocks, cfg, attention=i in cfg.encoder_attn_levels)
            if i != n - 1:
                level.downsample = Downsample(ch[i])
            self.levels.append(level)
            width = ch[i]
        self.mid = MidBlock(width, cfg.norm_groups, cfg.norm_eps, cfg.mid_attention, cfg.dropout)
        self.norm_out = group_norm(width, cfg.norm_groups, cfg.norm_eps)
        self.conv_out = nn.Conv2d(width, 2 * cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.levels:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(nn.functional.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """``(B, z_channels, h, w)`` -> ``(B, out_channels, f h, f w)``. ``levels[i]`` is resolution level i (0 = full
    resolution, as in the encoder); they run from the lowest resolution up and have ``num_res_blocks + 1`` blocks."""

    def __init__(self, cfg: KLAutoencoderConfig):
        super().__init__()
        n, ch = len(cfg.channels), cfg.channels
        self.conv_in = nn.Conv2d(cfg.z_channels, ch[-1], 3, padding=1)
        self.mid = MidBlock(ch[-1], cfg.norm_groups, cfg.norm_eps, cfg.mid_attention, cfg.dropout)
        levels: list[Level] = [None] * n  # type: ignore[list-item]
        width = ch[-1]
        for i in reversed(range(n)):
            level = Level(width, ch[i], cfg.num_res_blocks + 1, cfg, attention=i in cfg.decoder_attn_levels)
            if i != 0:
                level.upsample = Upsample(ch[i])
            levels[i] = level
            width = ch[i]
        self.levels = nn.ModuleList(levels)
        self.norm_out = group_norm(ch[0], cfg.norm_groups, cfg.norm_eps)
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.levels):
            h = level(h)
        return self.conv_out(nn.functional.silu(self.norm_out(h)))


@dataclass
class KLAutoencoderOutput:
    """`KLAutoencoder.forward`: the posterior, the latent that was decoded, and the image in [-1, 1]."""

    posterior: DiagonalGaussian
    z: torch.Tensor
    image: torch.Tensor


class KLAutoencoder(TokenizerRecordMixin, nn.Module):
    """A baseline tokenizer (VA-VAE or SD-VAE): ``KLAutoencoder(cfg_or_preset)``; random weights until loaded.

    Satisfies `vfmvae.tokenizer.interface.Tokenizer`: ``encode`` takes images in [0, 1] and returns the posterior
    over the unscaled latent, ``decode`` returns images in [-1, 1]. Presets: ``"vavae-f16d32"``,
    ``"sd-vae-ft-ema"`` (`vfmvae.baselines.config.BASELINE_PRESETS`).
    """

    def __init__(self, cfg: KLAutoencoderConfig | str):
        super().__init__()
        cfg = get_baseline_config(cfg) if isinstance(cfg, str) else cfg
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.z_channels, 2 * cfg.latent_channels, 1) if cfg.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(cfg.latent_channels, cfg.z_channels, 1) if cfg.use_post_quant_conv else None
        self.decoder = Decoder(cfg)

    # ------------------------------------------------------------------ Tokenizer members
    @property
    def kind(self) -> str:
        return self.cfg.kind

    @property
    def latent_channels(self) -> int:
        return self.cfg.latent_channels

    @property
    def downsample_factor(self) -> int:
        return self.cfg.downsample_factor

    def config_record(self) -> dict:
        return self.cfg.to_dict()

    def save_pretrained(self, directory, **kwargs) -> dict:
        """Export folder (`vfmvae.baselines.export`): config.json + model.safetensors with the weights hash."""
        from .export import save_baseline

        return save_baseline(self, directory, **kwargs)

    def _signed_input(self, images: torch.Tensor) -> torch.Tensor:
        """Check ``(B, C, H, W)`` images in [0, 1] (or uint8) and map them to the network's [-1, 1]."""
        name = type(self).__name__
        if images.ndim != 4 or images.shape[1] != self.cfg.in_channels:
            raise ValueError(
                f"{name}.encode: images must be (B, {self.cfg.in_channels}, H, W), got {tuple(images.shape)}"
            )
        images = as_unit(images, f"{name}.encode: images")
        self.latent_shape(*images.shape[-2:])  # raises on a size that is not a multiple of f
        if images.device.type == "cpu":
            lo, hi = (t.item() for t in torch.aminmax(images))
            if lo < -1e-3 or hi > 1 + 1e-3:
                raise ValueError(
                    f"{name}.encode: images must be in [0, 1] (got range [{lo:.3f}, {hi:.3f}]); map [-1, 1] "
                    "images with vfmvae.codec.signed_to_unit"
                )
        elif images.device.type != "meta":
            # A host-side check would synchronise every batch; assert on the device instead.
            lo_t, hi_t = torch.aminmax(images)
            torch._assert_async((lo_t >= -1e-3) & (hi_t <= 1 + 1e-3), f"{name}.encode: images must be in [0, 1]")
        return unit_to_signed(images).to(self.encoder.conv_in.weight.dtype)

    def encode_moments(self, images_signed: torch.Tensor) -> torch.Tensor:
        """The network alone: ``(B, 3, H, W)`` in [-1, 1] -> moments ``(B, 2C, H/f, W/f)`` = cat(mean, logvar),
        logvar not clamped (the official ``quant_conv(encoder(x))``)."""
        h = self.encoder(images_signed)
        return h if self.quant_conv is None else self.quant_conv(h)

    def encode(self, images: torch.Tensor) -> DiagonalGaussian:
        """``(B, 3, H, W)`` in [0, 1] -> posterior over the unscaled latent ``(B, C, H/f, W/f)``."""
        return DiagonalGaussian(self.encode_moments(self._signed_input(images)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` unscaled latent -> ``(B, 3, f h, f w)`` in [-1, 1], not clamped."""
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(
                f"{type(self).__name__}.decode: z must be (B, {self.latent_channels}, h, w), got {tuple(z.shape)}"
            )
        z = z.to(self.decoder.conv_in.weight.dtype)
        return self.decoder(z if self.post_quant_conv is None else self.post_quant_conv(z))

    def forward(
        self, images: torch.Tensor, sample: bool = False, eps: torch.Tensor | None = None, generator=None
    ) -> KLAutoencoderOutput:
        """Encode, take the mean (diffusers' default) or a sample (``sample=True``, with ``eps`` if given), decode."""
        posterior = self.encode(images)
        z = posterior.sample(eps, generator=generator) if sample or eps is not None else posterior.mode()
        return KLAutoencoderOutput(posterior=posterior, z=z, image=self.decode(z))

    # ------------------------------------------------------------------ optional global scaling
    @property
    def scaling_factor(self) -> float | None:
        """diffusers' global latent scale (SD-VAE: 0.18215), or None. Not applied by encode/decode: the project
        normalises latents per channel with the cache's statistics (docs/design.md, "Latent normalisation")."""
        return self.cfg.scaling_factor

    def _require_scaling(self) -> tuple[float, float]:
        if self.cfg.scaling_factor is None:
            raise ValueError(f"{self.kind} has no scaling_factor; use per-channel statistics (LatentNormalizer)")
        return float(self.cfg.scaling_factor), float(self.cfg.shift_factor or 0.0)

    def scale_latents(self, z: torch.Tensor) -> torch.Tensor:
        """``(z - shift_factor) * scaling_factor``: the DiT/SiT/REPA convention for SD-VAE latents."""
        scale, shift = self._require_scaling()
        return (z - shift) * scale

    def unscale_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of `scale_latents`: what `decode` takes."""
        scale, shift = self._require_scaling()
        return x / scale + shift

    def scaling_normalizer(self) -> LatentNormalizer:
        """The global scaling as a `LatentNormalizer` (mean = shift, std = 1 / scale in every channel), so the
        codec, cache and sampler can use the DiT/REPA convention instead of the cache's statistics."""
        scale, shift = self._require_scaling()
        c = self.latent_channels
        return LatentNormalizer(torch.full((c,), shift), torch.full((c,), 1.0 / scale))

    def extra_repr(self) -> str:
        c = self.cfg
        return (
            f"kind={c.kind}, f={c.downsample_factor}, latent_channels={c.latent_channels}, channels={list(c.channels)}"
        )
