"""The rows of the paper's decoder component ablation as tokenizer configs (docs/analyses.md, "Component
ablation").

The paper ablates the tokenizer cumulatively, each row trained for 5 M images with the weak-alignment
recipe: a baseline decoder, + Multi-Scale Latent Fusion, + modulated ConvNeXt / attention blocks,
+ multi-layer VFM features (the last row is the full VFM-VAE). Each row is the full config with the
components that are not yet added switched off:

| component | on (full model) | off (earlier rows) |
|---|---|---|
| Multi-Scale Latent Fusion | latent adapters at blocks 0-3 (`fusion_block_indices`) | the latent enters once, at block 0 (the decoder input) |
| modulated ConvNeXt / attention blocks | ConvNeXt layers + self-attention in blocks 0-2 | StyleGAN2 modulated 3x3 convs (`use_convnext=False`), no attention |
| multi-layer features | VFM layers (0, 12, -1), one head level each | the last layer (-1) only, one head level of the same width |

Progressive Resolution Reconstruction (a ToRGB head per block, feature-space skips, multi-scale pixel
losses) is in every row: the paper's ablation rows do not list it.
"""

from __future__ import annotations

import dataclasses

from .config import VFMVAEConfig

ABLATION_ROWS: tuple[str, ...] = ("baseline", "fusion", "blocks", "full")

ROW_TITLES: dict[str, str] = {
    "baseline": "baseline decoder",
    "fusion": "+ multi-scale latent fusion",
    "blocks": "+ modulated ConvNeXt / attention blocks",
    "full": "+ multi-layer features (VFM-VAE)",
}

# Which components each row has (cumulative, in the paper's order).
ROW_COMPONENTS: dict[str, tuple[bool, bool, bool]] = {
    #            fusion, convnext/attention, multi-layer features
    "baseline": (False, False, False),
    "fusion": (True, False, False),
    "blocks": (True, True, False),
    "full": (True, True, True),
}


def ablation_overrides(row: str, base: VFMVAEConfig) -> dict:
    """`VFMVAEConfig` field overrides (JSON-able lists) that turn ``base`` into ablation row ``row``.

    The full row returns ``{}``: the base config itself, so the last row is the unchanged tokenizer.
    """
    if row not in ROW_COMPONENTS:
        raise ValueError(f"unknown ablation row {row!r}; rows: {list(ABLATION_ROWS)}")
    fusion, blocks, multi_layer = ROW_COMPONENTS[row]
    out: dict = {}
    if not fusion:
        out["fusion_block_indices"] = [0]
    if not blocks:
        out.update(use_convnext=False, attn_block_indices=[], attn_depths=[])
    if not multi_layer:
        # The deepest level alone, with that level's head width (the last layer is the one the VF loss aligns to).
        out.update(vfm_layers=[base.vfm_layers[-1]], level_dims=[base.level_dims[-1]])
    return out


def ablation_config(row: str, base: VFMVAEConfig) -> VFMVAEConfig:
    """``base`` with row ``row``'s components switched off (see :func:`ablation_overrides`)."""
    return dataclasses.replace(base, **ablation_overrides(row, base))


__all__ = ["ABLATION_ROWS", "ROW_COMPONENTS", "ROW_TITLES", "ablation_config", "ablation_overrides"]
