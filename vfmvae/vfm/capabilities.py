"""Checks that a tokenizer setting fits what its frozen VFM can do.

`check_equivariance_supported(vfm, equivariance)`: the equivariance regulariser's "input" branch
(official `is_eq_prior=True`) downsizes the image *before* the VFM, i.e. asks the VFM for another
token grid. The official README: "Some foundation models do not support dynamic resolution. Please
set `use_equivariance_regularization=False` during training in such cases" (tested to support it:
SigLIP2, DINOv2, EVA-CLIP). Our wrappers state it as `FrozenVFM.supports_dynamic_resolution`
(False for MAE, whose official wrapper has no position-table resampling).

`check_layers_share_grid(vfm, layers, ...)`: the latent head fuses all levels on one token grid of
one width; Qwen2.5-VL's merged output (-1) lives on a grid half as fine as its block outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _resizes_encoder_input(equivariance: Any) -> bool:
    """Whether an equivariance setting (a bool, or an object with `enabled`, `p_latent`,
    `p_input_scale`, `input_scales` like `vfmvae.losses.EquivarianceConfig`) resizes the VFM input."""
    if isinstance(equivariance, bool) or equivariance is None:
        return bool(equivariance)  # the official flag: True turns the prior branch's resizes on
    if not getattr(equivariance, "enabled", True):
        return False
    scales = [s for s in getattr(equivariance, "input_scales", ()) if s != 1.0]
    p_input = 1.0 - float(getattr(equivariance, "p_latent", 0.0))
    return bool(scales) and p_input > 0 and float(getattr(equivariance, "p_input_scale", 1.0)) > 0


def check_equivariance_supported(vfm: Any, equivariance: Any) -> None:
    """Raise a one-line `ValueError` when `equivariance` would feed `vfm` another resolution it cannot take.

    `vfm`: a `FrozenVFM` (anything without `supports_dynamic_resolution` is assumed to support it).
    `equivariance`: the official bool `use_equivariance_regularization`, or an `EquivarianceConfig`.
    The latent branch (rotate/resize z) never touches the VFM and is always allowed.
    """
    if getattr(vfm, "supports_dynamic_resolution", True) or not _resizes_encoder_input(equivariance):
        return
    family = getattr(getattr(vfm, "config", None), "family", type(vfm).__name__)
    raise ValueError(
        f"equivariance regularisation resizes the encoder input, but the {family} VFM cannot change resolution "
        "(official README: set use_equivariance_regularization=False for such models); turn it off (preset 'off') "
        "or keep only the latent branch (input_scales=())"
    )


def check_layers_share_grid(vfm: Any, layers: Sequence[int], hidden_size: int | None = None) -> int:
    """Return the common token stride (pixels per token) of `layers`; error if they differ in grid or width.

    `hidden_size`: the tokenizer's `vfm_hidden_size` (official `patch_in_dimensions`), checked when given.
    """
    strides = {int(i): vfm.token_stride(i) for i in layers}
    dims = {int(i): vfm.layer_dim(i) for i in layers}
    if len(set(strides.values())) > 1:
        raise ValueError(
            f"VFM layers {list(layers)} live on different token grids (pixels per token {strides}); the latent "
            "head needs one grid: take either the merged output (-1) alone or only block outputs"
        )
    if hidden_size is not None and set(dims.values()) != {int(hidden_size)}:
        raise ValueError(
            f"VFM layers {list(layers)} have widths {dims}, but the tokenizer expects {hidden_size} "
            "(official patch_in_dimensions); pick layers of that width or fix the config"
        )
    return next(iter(strides.values()))


__all__ = ["check_equivariance_supported", "check_layers_share_grid"]
