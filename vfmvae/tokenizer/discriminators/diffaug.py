"""DiffAugment (Zhao et al. 2020) as the projected discriminator uses it (docs/design.md, "Tokenizer stages and losses").

Policy `color, translation, cutout`, applied to every batch that enters the discriminator (real
and fake independently), on images in [-1, 1], each sample with its own random draw:

- color: brightness `+ (u - 0.5)`, saturation `x (2u)` around the per-pixel channel mean,
  contrast `x (u + 0.5)` around the per-image mean (u ~ U[0, 1) per sample and per op);
- translation: integer shift up to `round(0.125 * size)` pixels per axis, zero fill;
- cutout: one zeroed square of side `round(0.2 * size)` at a uniformly random centre.

`strength` scales every magnitude (1 = the paper's DiffAugment, 0 = identity): brightness and
the saturation/contrast factors' deviations from 1, the translation range and the cutout side.
All ops are differentiable in the image, which is what lets G learn through D.
"""

from __future__ import annotations

import torch

POLICIES = ("color", "translation", "cutout")


def _uniform(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype, generator=generator)


def _randint(low: int, high: int, n: int, device, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randint(low, high, (n,), device=device, generator=generator)


def augment_color(x: torch.Tensor, strength: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    x = x + (_uniform(x, generator) - 0.5) * strength
    mean_c = x.mean(dim=1, keepdim=True)
    x = (x - mean_c) * (1.0 + (2.0 * _uniform(x, generator) - 1.0) * strength) + mean_c
    mean_all = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean_all) * (1.0 + (_uniform(x, generator) - 0.5) * strength) + mean_all
    return x


def augment_translation(
    x: torch.Tensor, strength: float = 1.0, ratio: float = 0.125, generator: torch.Generator | None = None
) -> torch.Tensor:
    b, _, h, w = x.shape
    max_dy, max_dx = int(h * ratio * strength + 0.5), int(w * ratio * strength + 0.5)
    if max_dy == 0 and max_dx == 0:
        return x
    dy = _randint(-max_dy, max_dy + 1, b, x.device, generator).view(b, 1, 1)
    dx = _randint(-max_dx, max_dx + 1, b, x.device, generator).view(b, 1, 1)
    # out[i, j] = x[i + dy, j + dx], reading zeros outside: index into a 1-pixel zero border.
    rows = (torch.arange(h, device=x.device).view(1, h, 1) + dy + 1).clamp(0, h + 1)
    cols = (torch.arange(w, device=x.device).view(1, 1, w) + dx + 1).clamp(0, w + 1)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def augment_cutout(
    x: torch.Tensor, strength: float = 1.0, ratio: float = 0.2, generator: torch.Generator | None = None
) -> torch.Tensor:
    b, _, h, w = x.shape
    cut_h, cut_w = int(h * ratio * strength + 0.5), int(w * ratio * strength + 0.5)
    if cut_h == 0 or cut_w == 0:
        return x
    cy = _randint(0, h + (1 - cut_h % 2), b, x.device, generator).view(b, 1, 1)
    cx = _randint(0, w + (1 - cut_w % 2), b, x.device, generator).view(b, 1, 1)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (
        (rows >= cy - cut_h // 2)
        & (rows < cy - cut_h // 2 + cut_h)
        & (cols >= cx - cut_w // 2)
        & (cols < cx - cut_w // 2 + cut_w)
    )
    return x * (~inside).unsqueeze(1).to(x.dtype)


def diff_augment(
    x: torch.Tensor,
    policy: tuple[str, ...] | str = POLICIES,
    strength: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Apply the DiffAugment `policy` to `(B, C, H, W)` images; output has the input's shape."""
    if x.dim() != 4:
        raise ValueError(f"diff_augment expects (B, C, H, W), got {tuple(x.shape)}")
    if isinstance(policy, str):
        policy = tuple(p.strip() for p in policy.split(",") if p.strip())
    unknown = [p for p in policy if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown DiffAugment policy {unknown}; known: {POLICIES}")
    if strength < 0:
        raise ValueError(f"DiffAugment strength must be >= 0, got {strength}")
    ops = {"color": augment_color, "translation": augment_translation, "cutout": augment_cutout}
    for name in policy:
        x = ops[name](x, strength=strength, generator=generator)
    return x.contiguous()
