"""StyleGAN-T projected discriminator on a frozen DINO ViT-S/16 (docs/design.md, "Tokenizer stages and losses").

Pipeline for a batch in [-1, 1] at any size (the EQ transform may have shrunk or rotated it):
DiffAugment (color, translation, cutout) -> [0, 1] -> if larger than 224, with p = 0.5 one random
224 x 224 crop for the whole batch -> resize anything still not 224 (bilinear, antialias only
when shrinking) -> ImageNet mean/std -> frozen ViT. Five taps: the token embedding after CLS
concat + position embedding, and the outputs of blocks 2, 5, 8, 11 (0-indexed). The CLS token is
added to every patch token and dropped -> 5 x (B, 384, 196). One trainable head per tap:
[SN-Conv1d k1 -> BatchNormLocal -> LReLU 0.2] -> residual [SN-Conv1d k9 circular -> BNLocal ->
LReLU] with (f(x) + x) / sqrt(2) -> SN-Conv1d to 1 channel. Logits concatenated -> (B, 5 * 196).

The ViT is frozen (`requires_grad_(False)`, pinned to eval) but *not* run under `no_grad`: the
generator learns through the discriminator, so gradients must reach the input image.

Backbone: the frozen DINO ViT-S/16 from `vfmvae.vfm.build_vfm(config.vfm_name, pretrained=path)`
(the project's one place that loads frozen networks; local files only), whose timm
`VisionTransformer` (`.backbone`) is read by a small adapter (`DinoTaps`) over timm's internals
(`patch_embed`, `_pos_embed`, `blocks`): the discriminator needs the embedding output and the
pre-norm block outputs *with* the CLS token. Presets with `vfm_name=None` (the `debug` one) build
a timm ViT of the configured shape directly.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import spectral_norm

from vfmvae.codec import signed_to_unit

from .diffaug import diff_augment
from .norms import BatchNormLocal

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ProjectedDiscriminatorConfig:
    """Shape of the DINO backbone and heads, plus the fixed preprocessing constants."""

    vit_embed_dim: int = 384
    vit_depth: int = 12
    vit_heads: int = 6
    vit_patch_size: int = 16
    image_size: int = 224
    tap_blocks: tuple[int, ...] = (2, 5, 8, 11)
    tap_embedding: bool = True
    head_kernel_size: int = 9
    virtual_batch: int = 8
    p_crop: float = 0.5
    diffaug_policy: tuple[str, ...] = ("color", "translation", "cutout")
    diffaug_strength: float = 1.0
    interpolation: str = "bilinear"
    vfm_name: str | None = "dino-vits16"  # `vfmvae.vfm` preset; None: build a timm ViT from the fields above


PROJECTED_DISCRIMINATOR_PRESETS: dict[str, ProjectedDiscriminatorConfig] = {
    "dino-vits16": ProjectedDiscriminatorConfig(),
    # Tiny random ViT for CPU tests: 32 px input, 4 x 4 tokens, 4 blocks of width 32.
    "debug": ProjectedDiscriminatorConfig(
        vit_embed_dim=32,
        vit_depth=4,
        vit_heads=2,
        vit_patch_size=8,
        image_size=32,
        tap_blocks=(0, 1, 2, 3),
        vfm_name=None,
    ),
}


def build_dino_vit(config: ProjectedDiscriminatorConfig, weights_path: str | os.PathLike | None = None) -> nn.Module:
    """The frozen timm ViT: via `vfmvae.vfm.build_vfm(config.vfm_name)` when set, else built from the config.

    `weights_path`: local DINO ViT-S/16 weights (timm / original DINO keys); None = random init.
    """
    if config.vfm_name is not None:
        from vfmvae.vfm import build_vfm

        wrapper = build_vfm(config.vfm_name, pretrained=weights_path)
        vit = getattr(wrapper, "backbone", None)
        if vit is None or not hasattr(vit, "blocks"):
            raise TypeError(f"VFM preset {config.vfm_name!r} is not a timm ViT; the projected discriminator needs one")
        if vit.embed_dim != config.vit_embed_dim or len(vit.blocks) != config.vit_depth:
            raise ValueError(
                f"VFM preset {config.vfm_name!r} (width {vit.embed_dim}, depth {len(vit.blocks)}) does not match the "
                f"discriminator config (width {config.vit_embed_dim}, depth {config.vit_depth})"
            )
        return vit
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(
        img_size=config.image_size,
        patch_size=config.vit_patch_size,
        embed_dim=config.vit_embed_dim,
        depth=config.vit_depth,
        num_heads=config.vit_heads,
        mlp_ratio=4.0,
        qkv_bias=True,
        num_classes=0,
    )
    if weights_path is not None:
        from vfmvae.utils.safe_load import load_user_file

        state = load_user_file(weights_path, what="DINO ViT weights")
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        vit.load_state_dict(state)
    return vit


class DinoTaps(nn.Module):
    """Frozen ViT returning the discriminator's taps as `(B, D, N)` with the CLS token added and dropped."""

    def __init__(self, vit: nn.Module, tap_blocks: tuple[int, ...], tap_embedding: bool = True):
        super().__init__()
        if list(tap_blocks) != sorted(tap_blocks) or max(tap_blocks) >= len(vit.blocks):
            raise ValueError(
                f"tap_blocks {tap_blocks} must be ascending block indices below the ViT depth {len(vit.blocks)}"
            )
        if getattr(vit, "num_prefix_tokens", 1) != 1 or getattr(vit, "cls_token", None) is None:
            raise ValueError("the discriminator ViT must have exactly one prefix token (CLS) and no registers")
        self.vit = vit
        self.tap_blocks = tuple(tap_blocks)
        self.tap_embedding = tap_embedding
        self.vit.requires_grad_(False)
        self.vit.eval()

    def train(self, mode: bool = True) -> DinoTaps:
        # Frozen network stays in eval() whatever its parent does (project convention).
        return self

    @staticmethod
    def _readout(tokens: torch.Tensor) -> torch.Tensor:
        # (B, 1 + N, D): add CLS to every patch token, drop it, channels first -> (B, D, N).
        return (tokens[:, 1:] + tokens[:, :1]).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """`x`: ImageNet-normalised `(B, 3, S, S)` at the ViT's native size. Order: blocks..., embedding."""
        vit = self.vit
        tokens = vit.patch_embed(x)
        tokens = vit._pos_embed(tokens)  # CLS concat + position embedding (+ pos_drop, identity in eval)
        embedding = self._readout(tokens)  # the official tap hooks `pos_drop`'s output
        tokens = vit.norm_pre(vit.patch_drop(tokens))  # both identity for DINO ViT-S/16
        taps = []
        for i, block in enumerate(vit.blocks):
            tokens = block(tokens)
            if i in self.tap_blocks:
                taps.append(self._readout(tokens))
            if i == self.tap_blocks[-1]:
                break
        if self.tap_embedding:
            # Official head order: heads 0..3 read blocks 2/5/8/11, head 4 reads the embedding.
            taps.append(embedding)
        return taps


class ResidualBlock(nn.Module):
    """`(fn(x) + x) / sqrt(2)` (StyleGAN-T's variance-preserving residual)."""

    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.fn(x) + x) * (1.0 / math.sqrt(2.0))


def _sn_conv1d(c_in: int, c_out: int, kernel_size: int, circular: bool) -> nn.Conv1d:
    conv = nn.Conv1d(
        c_in, c_out, kernel_size, padding=kernel_size // 2, padding_mode="circular" if circular else "zeros"
    )
    # Legacy hook API on purpose: keys `weight_orig/weight_u/weight_v` as in the official checkpoints.
    return spectral_norm(conv, n_power_iterations=1, eps=1e-12, dim=0)


def _sn_block(channels: int, kernel_size: int, virtual_batch: int) -> nn.Sequential:
    return nn.Sequential(
        _sn_conv1d(channels, channels, kernel_size, circular=True),
        BatchNormLocal(channels, virtual_batch=virtual_batch),
        nn.LeakyReLU(0.2),
    )


class DiscriminatorHead(nn.Module):
    """One unconditional head: `(B, D, N) -> (B, 1, N)` logits. 1,477,249 parameters at D = 384."""

    def __init__(self, channels: int, kernel_size: int = 9, virtual_batch: int = 8):
        super().__init__()
        self.main = nn.Sequential(
            _sn_block(channels, 1, virtual_batch),
            ResidualBlock(_sn_block(channels, kernel_size, virtual_batch)),
        )
        self.cls = _sn_conv1d(channels, 1, 1, circular=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls(self.main(x))


def build_heads(config: ProjectedDiscriminatorConfig) -> nn.ModuleDict:
    n_taps = len(config.tap_blocks) + int(config.tap_embedding)
    return nn.ModuleDict(
        {
            str(i): DiscriminatorHead(config.vit_embed_dim, config.head_kernel_size, config.virtual_batch)
            for i in range(n_taps)
        }
    )


class ProjectedDiscriminator(nn.Module):
    """`forward(img) -> (B, num_taps * N)` logits for images `(B, 3, H, W)` in [-1, 1] (square).

    Args:
        config: shapes and preprocessing (`PROJECTED_DISCRIMINATOR_PRESETS`).
        vit: an already built timm ViT, or a `vfmvae.vfm` wrapper holding one as `.backbone`;
            default: `build_dino_vit(config, vit_weights_path)`.
        vit_weights_path: local DINO ViT-S/16 state dict (timm names) when `vit` is not given.
    """

    def __init__(
        self,
        config: ProjectedDiscriminatorConfig | None = None,
        vit: nn.Module | None = None,
        vit_weights_path: str | os.PathLike | None = None,
    ):
        super().__init__()
        self.config = config or ProjectedDiscriminatorConfig()
        if vit is None:
            vit = build_dino_vit(self.config, vit_weights_path)
        vit = getattr(vit, "backbone", vit)  # accept a vfmvae.vfm.TimmViTVFM wrapper
        self.dino = DinoTaps(vit, self.config.tap_blocks, self.config.tap_embedding)
        self.heads = build_heads(self.config)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """[-1, 1] images -> augmented, cropped/resized, ImageNet-normalised `(B, 3, S, S)`.

        `generator` (optional, for reproducible draws) must live on the images' device.
        """
        cfg = self.config
        if img.dim() != 4 or img.shape[1] != 3:
            raise ValueError(f"discriminator input must be (B, 3, H, W), got {tuple(img.shape)}")
        if img.shape[-1] != img.shape[-2]:
            raise ValueError(f"discriminator input must be square, got {tuple(img.shape[-2:])}")
        x = diff_augment(img, cfg.diffaug_policy, cfg.diffaug_strength, generator) if cfg.diffaug_policy else img
        x = signed_to_unit(x)
        size = cfg.image_size
        # One crop window for the whole batch (as torchvision's RandomCrop on a batch tensor).
        dev = generator.device if generator is not None else torch.device("cpu")
        if x.shape[-1] > size and torch.rand((), generator=generator, device=dev).item() < cfg.p_crop:
            top = int(torch.randint(0, x.shape[-2] - size + 1, (), generator=generator, device=dev))
            left = int(torch.randint(0, x.shape[-1] - size + 1, (), generator=generator, device=dev))
            x = x[..., top : top + size, left : left + size]
        if x.shape[-1] != size:
            shrink = x.shape[-1] > size
            x = F.interpolate(x, size=(size, size), mode=cfg.interpolation, align_corners=False, antialias=shrink)
        return (x - self.mean) / self.std

    def forward(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = self.preprocess(img, generator)
        taps = self.dino(x)
        logits = [head(tap).flatten(1) for head, tap in zip(self.heads.values(), taps)]
        return torch.cat(logits, dim=1)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The heads' parameters (the only trainable part)."""
        return list(self.heads.parameters())
