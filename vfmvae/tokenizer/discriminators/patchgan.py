"""pix2pixHD multi-scale PatchGAN with intermediate features (stage 3; docs/design.md, "Tokenizer stages and losses").

Three scales: the input, then two 3 x 3 average-pool (stride 2, padding 1, `count_include_pad
False`) downsamplings. Each scale is an N-layer PatchGAN (N = 3):
Conv4x4 s2 3->64 + LReLU; Conv s2 64->128, 128->256 with BatchNormLocal2d (virtual batch 8) +
LReLU; Conv s1 256->512 + BN + LReLU; Conv s1 512->1 (padding 2 everywhere). Conv weights
N(0, 0.02), biases at PyTorch's default. Input in [-1, 1], no augmentation.
Output: one list per scale (full resolution first) of the 5 stage outputs
`[f1, f2, f3, f4, logits]`; the LSGAN loss reads `logits`, feature matching reads `f1..f4`.
2,766,529 parameters per scale, 8,299,587 for three.

Official module names differ (`scale{num_D-1-i}_layer{j}` handles the i-th input, i.e. the
full-resolution input goes through `scale2_*`); `official_key_map` gives the mapping.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .norms import BatchNormLocal2d


@dataclass
class PatchGANConfig:
    in_channels: int = 3
    base_channels: int = 64
    num_layers: int = 3
    num_scales: int = 3
    max_channels: int = 512
    virtual_batch: int = 8
    init_std: float = 0.02


PATCHGAN_PRESETS: dict[str, PatchGANConfig] = {
    "pix2pixhd": PatchGANConfig(),
    "debug": PatchGANConfig(base_channels=8, max_channels=32),
}

KERNEL, PADDING = 4, 2  # padding = ceil((4 - 1) / 2)


def _stage(c_in: int, c_out: int, stride: int, norm: bool, act: bool, virtual_batch: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, KERNEL, stride=stride, padding=PADDING)]
    if norm:
        layers.append(BatchNormLocal2d(c_out, virtual_batch=virtual_batch))
    if act:
        layers.append(nn.LeakyReLU(0.2))
    return nn.Sequential(*layers)


class NLayerPatchGAN(nn.Module):
    """One scale: `(B, 3, H, W) -> [f1, ..., f_{N+1}, logits]` (N + 2 stage outputs)."""

    def __init__(self, config: PatchGANConfig):
        super().__init__()
        c, vb = config.base_channels, config.virtual_batch
        stages = [_stage(config.in_channels, c, 2, norm=False, act=True, virtual_batch=vb)]
        for _ in range(1, config.num_layers):
            c_prev, c = c, min(c * 2, config.max_channels)
            stages.append(_stage(c_prev, c, 2, norm=True, act=True, virtual_batch=vb))
        c_prev, c = c, min(c * 2, config.max_channels)
        stages.append(_stage(c_prev, c, 1, norm=True, act=True, virtual_batch=vb))
        stages.append(_stage(c, 1, 1, norm=False, act=False, virtual_batch=vb))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs


class MultiScalePatchGAN(nn.Module):
    """`forward(img) -> list over scales (full resolution first) of [f1, f2, f3, f4, logits]`."""

    def __init__(self, config: PatchGANConfig | None = None):
        super().__init__()
        self.config = config or PatchGANConfig()
        self.scales = nn.ModuleList(NLayerPatchGAN(self.config) for _ in range(self.config.num_scales))
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, self.config.init_std)

    def forward(self, img: torch.Tensor) -> list[list[torch.Tensor]]:
        if img.dim() != 4 or img.shape[1] != self.config.in_channels:
            raise ValueError(f"PatchGAN input must be (B, {self.config.in_channels}, H, W), got {tuple(img.shape)}")
        results, x = [], img
        for i, scale in enumerate(self.scales):
            results.append(scale(x))
            if i + 1 < len(self.scales):
                x = self.downsample(x)
        return results

    def official_key_map(self) -> dict[str, str]:
        """Our state-dict key -> the official `MultiscaleDiscriminator` key (`get_interm_feat=True`)."""
        mapping = {}
        n = len(self.scales)
        for key in self.state_dict():
            _, i, _, j, rest = key.split(".", 4)
            mapping[key] = f"scale{n - 1 - int(i)}_layer{j}.{rest}"
        return mapping
