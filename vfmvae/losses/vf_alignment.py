"""VF (vision-foundation) alignment loss and its adaptive weight (docs/design.md, "Tokenizer stages and losses").

VA-VAE-style loss between a 1x1 projection of the *sampled* latent z (`linear_proj`, 32 -> 1024,
owned by the tokenizer) and the frozen VFM's final post-LayerNorm patch features average-pooled
to the latent grid. With unit-normalised channel vectors at the N = h*w positions of one image:

    L_dm  = mean_{i,j} ReLU(|cos(z_i, z_j) - cos(f_i, f_j)| - m1)      (full N x N matrices)
    L_cos = mean_i     ReLU(1 - m2 - cos(z_i, f_i))
    L_vf  = w1 * L_dm + w2 * L_cos                                     (m1 = m2 = 0, w1 = w2 = 1)

Adaptive weight (stages 0-1): lambda = base * clamp(|grad_theta L_rec| / (|grad_theta L_vf| + 1e-4),
0, 1e8), detached, with theta = the weight of the encoder head's last Linear (`final_quant`'s last
block `mlp.w2`). base = 5 in stage 0 ("strong alignment"), 1 in stage 1 ("weak alignment").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Named presets of the VF-loss base weight (the only loss difference between stages 0 and 1).
VF_BASE_WEIGHTS: dict[str, float] = {"stage0": 5.0, "stage1": 1.0, "stage2": 0.0, "stage3": 0.0, "debug": 1.0}


@dataclass
class VFLossConfig:
    """Margins and weights of the two VF terms (official configs: margins 0, weights 1)."""

    distmat_margin: float = 0.0
    cos_margin: float = 0.0
    distmat_weight: float = 1.0
    cos_weight: float = 1.0


def tokens_to_latent_grid(tokens: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """VFM patch tokens `(B, N, D)` on a square grid -> `(B, D, h, w)` average-pooled to the latent grid.

    Tokens are row-major (as every ViT emits them). Adaptive average pooling matches the official
    `F.adaptive_avg_pool2d` (an exact 2x2 mean at 32 -> 16).
    """
    if tokens.dim() != 3:
        raise ValueError(f"VFM tokens must be (B, N, D), got {tuple(tokens.shape)}")
    b, n, d = tokens.shape
    side = int(round(n**0.5))
    if side * side != n:
        raise ValueError(f"VFM token count {n} is not a square grid (CLS/register tokens must be removed)")
    grid = tokens.transpose(1, 2).reshape(b, d, side, side)
    if (side, side) != tuple(latent_hw):
        grid = F.adaptive_avg_pool2d(grid, tuple(latent_hw))
    return grid


def vf_loss(z_proj: torch.Tensor, target: torch.Tensor, config: VFLossConfig | None = None) -> dict[str, torch.Tensor]:
    """VF alignment loss between `z_proj` and `target`, both `(B, D, h, w)`.

    `target` is detached here (the VFM never trains). Returns
    `{"vf": w1*L_dm + w2*L_cos, "vf_distmat": L_dm, "vf_cos": L_cos}` (the parts detached, for logging).
    """
    cfg = config or VFLossConfig()
    if z_proj.shape != target.shape:
        raise ValueError(
            f"vf_loss: projected latent {tuple(z_proj.shape)} and VFM target {tuple(target.shape)} differ; "
            "pool the VFM features to the latent grid and project z to the VFM width first"
        )
    # Float32 island (also under an ambient bf16/fp16 autocast, which would otherwise run the
    # einsums in half precision): the N x N cosine matrices are reductions over D channels.
    with torch.autocast(z_proj.device.type, enabled=False):
        return _vf_loss_fp32(z_proj, target, cfg)


def _vf_loss_fp32(z_proj: torch.Tensor, target: torch.Tensor, cfg: VFLossConfig) -> dict[str, torch.Tensor]:
    z = z_proj.float().flatten(2)  # (B, D, N)
    f = target.detach().float().flatten(2)
    z_unit = F.normalize(z, dim=1)
    f_unit = F.normalize(f, dim=1)
    z_sim = torch.einsum("bdi,bdj->bij", z_unit, z_unit)
    f_sim = torch.einsum("bdi,bdj->bij", f_unit, f_unit)
    distmat = F.relu((z_sim - f_sim).abs() - cfg.distmat_margin).mean()
    cos = F.cosine_similarity(z, f, dim=1)  # (B, N), eps-guarded like the official call
    cos_term = F.relu(1.0 - cfg.cos_margin - cos).mean()
    total = cfg.distmat_weight * distmat + cfg.cos_weight * cos_term
    return {"vf": total, "vf_distmat": distmat.detach(), "vf_cos": cos_term.detach()}


def adaptive_vf_weight(
    rec_loss: torch.Tensor,
    vf_loss_value: torch.Tensor,
    last_layer_weight: torch.Tensor,
    base_weight: float,
    eps: float = 1e-4,
    max_ratio: float = 1e8,
) -> torch.Tensor:
    """`base * clamp(|d rec/d theta| / (|d vf/d theta| + eps), 0, max_ratio)`, detached scalar.

    Two `autograd.grad` calls with `retain_graph=True`, so the caller can still backpropagate
    the total loss afterwards. `rec_loss` is the main reconstruction loss only (L1 + LPIPS + SSIM
    + multi-scale L1); the GAN terms are not part of the reference gradient (official code).
    """
    if not last_layer_weight.requires_grad:
        raise ValueError(
            "adaptive_vf_weight: the encoder head's last-layer weight does not require grad (is the head frozen?)"
        )
    if base_weight == 0:
        return torch.zeros((), device=last_layer_weight.device)
    (rec_grad,) = torch.autograd.grad(rec_loss, last_layer_weight, retain_graph=True, allow_unused=True)
    (vf_grad,) = torch.autograd.grad(vf_loss_value, last_layer_weight, retain_graph=True, allow_unused=True)
    if rec_grad is None or vf_grad is None:
        missing = "reconstruction loss" if rec_grad is None else "VF loss"
        raise ValueError(f"adaptive_vf_weight: the {missing} does not depend on the given last-layer weight")
    ratio = rec_grad.float().norm() / (vf_grad.float().norm() + eps)
    return (ratio.clamp(0.0, max_ratio) * base_weight).detach()


def vf_loss_from_latent(
    z: torch.Tensor,
    vfm_last_tokens: torch.Tensor,
    projection: torch.nn.Module,
    config: VFLossConfig | None = None,
) -> dict[str, torch.Tensor]:
    """VF loss from the sampled, *untransformed* z `(B, C, h, w)` and the VFM's final post-LN tokens `(B, N, D)`.

    `projection` is the tokenizer's 1x1 `linear_proj` (C -> D, no bias); the tokens are pooled to
    the latent grid here.
    """
    target = tokens_to_latent_grid(vfm_last_tokens, tuple(z.shape[-2:]))
    return vf_loss(projection(z), target, config)
