"""Synthesis network: Progressive Resolution Reconstruction with Multi-Scale Latent Fusion
(docs/design.md, "Tokenizer architecture").

Six blocks, each doubling the resolution (8 -> 256 px at 256 px input; channels
[512, 512, 512, 512, 256, 128]). Block i:

    x_in = cat(x_{i-1}, adapter_i(z))      (i in fusion blocks; block 0 starts from the adapter alone)
    x_i  = attention*( convnext*( upsample(x_in) ) )
    s_i  = skip_upsample_i(s_{i-1}) + x_i  (feature-space skip, s_0 = x_0)
    img_i = to_rgb_i(s_i, w)

`img_5` is the output image; `img_0..img_4` are the multi-scale outputs. Everything is
size-agnostic except the fixed factors of the fusion adapters, so a `(B, D, h, w)` latent gives a
`(B, 3, 16h, 16w)` image as long as h and w are divisible by 4.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import SelfAttentionBlock
from .config import VFMVAEConfig
from .convnext import ModulatedConvNeXtLayer, ModulatedToRGB, SeparableBlurUpsample
from .cross_attention import CrossAttentionBlock
from .fusion import LatentAdapter
from .plain_conv import plain_layers


class SynthesisBlock(nn.Module):
    """One resolution block. `forward(x (B, C_in, H, W), skip | None, ws (B, n_ws, w_dim))
    -> (x (B, C, 2H, 2W), skip (B, C, 2H, 2W), img (B, 3, 2H, 2W))`.

    The block is the FSDP-wrap / activation-checkpoint unit of the decoder.
    """

    def __init__(self, cfg: VFMVAEConfig, index: int, in_channels: int):
        super().__init__()
        out_ch = cfg.block_channels[index]
        prev_ch = cfg.block_channels[index - 1] if index > 0 else None
        kernel = 5 if index <= 1 else 7  # smaller depthwise kernels at 8 and 16 px
        blur = 3 if index <= 2 else 5
        self.index = index
        self.upsample = SeparableBlurUpsample(in_channels, out_ch, blur, pre_norm=index > 0, use_blur=cfg.use_blur)
        self.layers = nn.ModuleList(
            ModulatedConvNeXtLayer(out_ch, cfg.style_dim, kernel, legacy=cfg.legacy, noise_resolution=8 * 2**index)
            for _ in range(cfg.convnext_layers(index))
        )
        if not cfg.use_convnext:  # the ablation's baseline layers instead (docs/analyses.md, "Component ablation")
            # style width: `style_dim` where a conditional decoder widens w, else w_dim
            self.layers = plain_layers(out_ch, getattr(cfg, "style_dim", cfg.w_dim), cfg.convnext_layers(index))
        self.attention = nn.ModuleList(
            SelfAttentionBlock(out_ch, cfg.attn_heads, cfg.attn_ff_mult) for _ in range(cfg.attn_depth(index))
        )
        # Text-conditional decoders attend to the text tokens after the self-attention (docs/conditional.md).
        self.cross_attention = nn.ModuleList(
            CrossAttentionBlock(out_ch, cfg.text_dim, cfg.attn_heads, cfg.attn_ff_mult)
            for _ in range(cfg.attn_depth(index) if cfg.cross_attention else 0)
        )
        self.skip_upsample = None
        if prev_ch is not None:
            self.skip_upsample = SeparableBlurUpsample(prev_ch, out_ch, blur, pre_norm=True, use_blur=cfg.use_blur)
        self.to_rgb = ModulatedToRGB(out_ch, cfg.style_dim, cfg.img_channels)
        self.num_ws = len(self.layers) + 1

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, ws: torch.Tensor, text=None):
        x = self.upsample(x)
        for i, layer in enumerate(self.layers):
            x = layer(x, ws[:, i])
        for attn in self.attention:
            x = attn(x)
        for attn in self.cross_attention:  # text: a TextCondition (tokens, pooled, mask)
            x = attn(x, text.tokens, text.mask)
        skip = x if self.skip_upsample is None else self.skip_upsample(skip) + x
        img = self.to_rgb(skip, ws[:, len(self.layers)]).float()
        return x, skip, img


class SynthesisNetwork(nn.Module):
    """`forward(z_lifted (B, D, h, w), ws (B, num_ws, w_dim)) -> (image (B, 3, 16h, 16w), [img_4, ..., img_0])`.

    The multi-scale list is ordered largest first (official order): sides 8h, 4h, 2h, h, h/2.
    """

    def __init__(self, cfg: VFMVAEConfig):
        super().__init__()
        self.fusion_block_indices = cfg.fusion_block_indices
        self.fusion = nn.ModuleDict(
            {
                str(i): LatentAdapter(
                    cfg.lifted_dim,
                    cfg.fusion_dims[i],
                    cfg.z_resolution,
                    cfg.block_resolutions[i] // 2,
                    cfg.fusion_activation,
                )
                for i in cfg.fusion_block_indices
            }
        )
        self.blocks = nn.ModuleList()
        for i in range(cfg.num_blocks):
            in_ch = cfg.block_channels[i - 1] if i > 0 else 0
            in_ch += cfg.fusion_dims[i] if i in cfg.fusion_block_indices else 0
            self.blocks.append(SynthesisBlock(cfg, i, in_ch))
        self.num_ws = sum(b.num_ws for b in self.blocks)
        # Runtime knob (not architecture): recompute each block in backward to save activation memory.
        self.activation_checkpointing = False

    def forward(self, z: torch.Tensor, ws: torch.Tensor, text=None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if ws.ndim != 3 or ws.shape[1] != self.num_ws:
            raise ValueError(f"SynthesisNetwork: ws must be (B, {self.num_ws}, w_dim), got {tuple(ws.shape)}")
        x = skip = None
        images = []
        start = 0
        for i, block in enumerate(self.blocks):
            if i in self.fusion_block_indices:
                zi = self.fusion[str(i)](z)
                x = zi if x is None else torch.cat([x, zi.to(x.dtype)], dim=1)
            block_ws = ws[:, start : start + block.num_ws]
            if self.activation_checkpointing and torch.is_grad_enabled():
                x, skip, img = checkpoint(block, x, skip, block_ws, text, use_reentrant=False)
            else:
                x, skip, img = block(x, skip, block_ws, text)
            start += block.num_ws
            images.append(img)
        return images[-1], images[-2::-1]
