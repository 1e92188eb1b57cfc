"""`FrozenVFM`: the one wrapper contract for every frozen vision foundation model.

images in [0, 1] `(B, 3, H, W)` -> per-call resize -> the model's own mean/std -> backbone ->
patch tokens `(B, N, D)` of the requested layers (optionally the CLS token `(B, D)`).

Layer index convention (official `networks/utils/vfm_utils.py`, docs/design.md, "Frozen networks"),
with L = `num_layers` transformer blocks and `hidden_states` the L + 1 pre-norm sequences:

    0        -> hidden_states[0]      embedding output (patch embed + position embedding)
    k (1..L) -> hidden_states[k]      output of block k
    -1       -> final output          after the final norm (HF `last_hidden_state`)
    -k (k>=2)-> hidden_states[L+2-k]  i.e. hidden_states[-k+1]: -2 is block L before the
                                      final norm, -3 block L-1, ..., -(L+2) the embedding output

Families narrow or reinterpret it exactly as their official wrappers do (EVA: -1 is the last
block *without* a norm; EVA and MAE accept no other negative index; Qwen2.5-VL: -1 is the
2x2-merged output on its own grid); see `resolve_layer` of each wrapper.

The paper's tokenizer uses `[0, 12, -1]` on SigLIP2-L (paper Sec. 3).

Each wrapper class also states its official capabilities: `resize_mode` (interpolation of the
tokenizer's `scale_factor` resize), `eq_prior_resize` (how the official wrapper downsizes the
input for the equivariance "prior" branch), `supports_dynamic_resolution` (whether it runs at
another token grid than its native one; see `check_equivariance_supported`).

Frozen (docs/design.md, "Frozen networks"): `requires_grad_(False)` at construction and `train()`
always leaves the module in eval mode. Whether the *input* needs a gradient is the caller's choice
(`torch.no_grad()` in the tokenizer; input gradients in the projected discriminator).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from vfmvae.vfm.config import VFMConfig

FINAL = "final"  # marker for the post-LayerNorm output (layer -1)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "nearest-exact", "area")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_layer(index: int, num_layers: int) -> int | str:
    """Map a user layer index to a `hidden_states` index, or `FINAL` for -1 (see module doc)."""
    if isinstance(index, bool) or not isinstance(index, int):
        raise TypeError(f"layer indices must be ints, got {index!r} ({type(index).__name__})")
    if index == -1:
        return FINAL
    if 0 <= index <= num_layers:
        return index
    if -(num_layers + 2) <= index <= -2:
        return num_layers + 2 + index
    raise ValueError(
        f"layer index {index} out of range for a {num_layers}-block model: valid are 0..{num_layers} "
        f"(0 = embeddings, k = block k), -1 (post-LayerNorm output) and -2..-{num_layers + 2}"
    )


def resize_images(
    images: torch.Tensor,
    size: int | Sequence[int] | None = None,
    scale: float | None = None,
    interpolation: str = "bilinear",
    antialias: bool | str = False,
) -> torch.Tensor:
    """Resize `(B, C, H, W)` by a target `size` (int or (h, w)) or a `scale` factor; neither = unchanged.

    `scale` is passed to `F.interpolate(scale_factor=...)` like the official wrappers, so the output
    side is floor(H * scale) and the sampling grid uses the exact factor. `antialias="auto"` applies
    antialiasing only when shrinking (the official rule `antialias=(scale_factor < 1)`).
    """
    if size is not None and scale is not None:
        raise ValueError("pass either `size` or `scale`, not both")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    if antialias not in (True, False, "auto"):
        raise ValueError(f"antialias must be True, False or 'auto', got {antialias!r}")
    in_hw = tuple(images.shape[-2:])
    if scale is not None:
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        if scale == 1.0:
            return images
        out_hw = (int(in_hw[0] * scale), int(in_hw[1] * scale))
        kwargs = dict(scale_factor=float(scale))
    elif size is not None:
        out_hw = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
        if len(out_hw) != 2 or min(out_hw) < 1:
            raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
        if out_hw == in_hw:
            return images
        kwargs = dict(size=out_hw)
    else:
        return images
    shrinking = out_hw[0] < in_hw[0] or out_hw[1] < in_hw[1]
    aa = shrinking if antialias == "auto" else bool(antialias)
    if aa and interpolation not in ("bilinear", "bicubic"):
        raise ValueError(f"antialias is only supported for bilinear/bicubic, not {interpolation!r}")
    if interpolation in ("bilinear", "bicubic"):
        kwargs.update(align_corners=False, antialias=aa)
    return F.interpolate(images, mode=interpolation, **kwargs)


class FrozenVFM(nn.Module):
    """Base class of all frozen VFM wrappers.

    Subclasses set `self.backbone` and implement `_run_backbone`. Attributes: `hidden_size`,
    `patch_size`, `num_layers`, `has_cls`, `image_size` (native side), `num_prefix_tokens`
    (CLS + register tokens in front of the patch tokens), `config` (`VFMConfig`).
    """

    # Official capabilities of the family (overridden per wrapper class, see the module doc).
    resize_mode: str = "bilinear"
    eq_prior_resize: tuple[str, bool] = ("bilinear", True)
    supports_dynamic_resolution: bool = True

    def __init__(self, config: VFMConfig, num_prefix_tokens: int):
        super().__init__()
        self.config = config
        self.hidden_size = config.hidden_size
        self.patch_size = config.patch_size
        self.num_layers = config.num_layers
        self.has_cls = config.has_cls
        self.image_size = config.image_size
        self.num_prefix_tokens = num_prefix_tokens
        # Non-persistent: they are preprocessing constants, not weights (keeps checkpoints clean).
        self.register_buffer("image_mean", torch.tensor(config.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(config.image_std).view(1, 3, 1, 1), persistent=False)

    def freeze(self) -> FrozenVFM:
        """Called by subclasses once the backbone exists: no parameter ever trains."""
        self.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> FrozenVFM:
        # A parent's `.train()` recurses into children through this method: stay in eval so
        # dropout/droppath never activate on the frozen encoder.
        return super().train(False)

    # ----------------------------------------------------------------- hooks for subclasses
    def _run_backbone(
        self, pixel_values: torch.Tensor, hidden_indices: set[int], need_final: bool
    ) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
        """Return ({hidden index: full sequence (B, T, D)}, final sequence or None)."""
        raise NotImplementedError

    def resolve_layer(self, index: int) -> int | str:
        """A user layer index -> `hidden_states` index or `FINAL` (the general rule; families narrow it)."""
        return resolve_layer(index, self.num_layers)

    @property
    def input_multiple(self) -> int:
        """The resized input sides must be multiples of this (the patch size; 28 for Qwen2.5-VL)."""
        return self.patch_size

    def token_stride(self, layer: int) -> int:
        """Pixels of the resized input per token of `layer` (the patch size; 28 for Qwen2.5-VL's -1)."""
        self.resolve_layer(layer)
        return self.patch_size

    def layer_dim(self, layer: int) -> int:
        """Channels of the tokens of `layer` (hidden_size; the merger width for Qwen2.5-VL's -1)."""
        self.resolve_layer(layer)
        return self.hidden_size

    def token_grid(self, height: int, width: int, layer: int = -1) -> tuple[int, int]:
        """Token grid `(h, w)` of `layer` for a *resized* input of `height x width` pixels."""
        stride = self.token_stride(layer)
        return height // stride, width // stride

    # ----------------------------------------------------------------- public API
    def preprocess(
        self,
        images: torch.Tensor,
        size=None,
        scale=None,
        interpolation: str | None = None,
        antialias: bool | str | None = None,
    ) -> torch.Tensor:
        """[0, 1] images `(B, 3, H, W)` -> resized, normalised pixel values (same dtype).

        `interpolation=None` is the family's official `resize_mode`; `antialias=None` is the official
        rule for a `scale` resize (antialias only when shrinking) and False for a `size` resize.
        """
        self._check_images(images)
        interpolation = self.resize_mode if interpolation is None else interpolation
        if antialias is None:
            antialias = "auto" if scale is not None else False
        x = resize_images(images, size=size, scale=scale, interpolation=interpolation, antialias=antialias)
        h, w = x.shape[-2:]
        m = self.input_multiple
        if h % m or w % m:
            raise ValueError(
                f"the resized input {h}x{w} is not a multiple of the patch size {m}; "
                f"choose `size`/`scale` so that both sides are (input was {tuple(images.shape[-2:])})"
            )
        if not self.supports_dynamic_resolution and (h, w) != (self.image_size, self.image_size):
            raise ValueError(
                f"{type(self).__name__} ({self.config.family}) cannot change resolution (its official wrapper has "
                f"no position-table resampling): the resized input is {h}x{w} but the model needs "
                f"{self.image_size}x{self.image_size}; resize to that size or build the VFM with "
                f"config={{'image_size': {h}}} (square inputs only)"
            )
        return (x - self.image_mean.to(x.dtype)) / self.image_std.to(x.dtype)

    def forward(
        self,
        images: torch.Tensor,
        layers: Sequence[int],
        *,
        size: int | Sequence[int] | None = None,
        scale: float | None = None,
        interpolation: str | None = None,
        antialias: bool | str | None = None,
        return_cls: bool = False,
    ):
        """Per-layer patch tokens of `images`.

        Args:
            images: float `(B, 3, H, W)` in [0, 1].
            layers: layer indices (see module doc: 0 embeddings, k block k, -1 final, -k).
            size / scale: per-call resize target (int or (h, w)) or factor; neither = as given.
            interpolation: resize mode; None = the family's official `resize_mode` (the tokenizer path).
            antialias: True/False/"auto" (only when shrinking); None = "auto" for `scale`, else False.
            return_cls: also return the CLS token of each layer (error if the model has none).
        Returns:
            `list[(B, N, D)]` float32 patch tokens in row-major grid order (no CLS/register tokens),
            N = (H'/p) * (W'/p) (see `token_grid`); with `return_cls`, `(tokens, cls)` where `cls[i]` is `(B, D)`.
        """
        if return_cls and not self.has_cls:
            raise ValueError(
                f"{type(self).__name__} ({self.config.family}) has no CLS token; call with return_cls=False"
            )
        if isinstance(layers, int) or len(layers) == 0:
            raise ValueError(f"`layers` must be a non-empty list of ints, got {layers!r}")
        targets = [self.resolve_layer(i) for i in layers]
        pixel_values = self.preprocess(images, size, scale, interpolation, antialias)
        hidden_indices = {t for t in targets if t != FINAL}
        # If the frozen weights were cast (e.g. Lightning "bf16-true"), feed inputs of their dtype.
        weight_dtype = next(self.backbone.parameters()).dtype
        if weight_dtype.is_floating_point and weight_dtype != pixel_values.dtype:
            pixel_values = pixel_values.to(weight_dtype)
        with self._autocast(pixel_values.device):
            hidden, final = self._run_backbone(pixel_values, hidden_indices, FINAL in targets)
        seqs = [(final if t == FINAL else hidden[t]).float() for t in targets]
        tokens = [s[:, self.num_prefix_tokens :] for s in seqs]
        if not return_cls:
            return tokens
        return tokens, [s[:, 0] for s in seqs]

    # ----------------------------------------------------------------- helpers
    def _autocast(self, device: torch.device):
        """Backbone precision is decided here, not by the ambient autocast (docs/design.md, "Precision policy")."""
        if device.type == "meta":
            return nullcontext()
        dtype = _DTYPES[self.config.compute_dtype]
        if dtype == torch.float32:
            return torch.autocast(device_type=device.type, enabled=False)
        return torch.autocast(device_type=device.type, dtype=dtype)

    @staticmethod
    def _check_images(images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise TypeError(
                f"images must be float in [0, 1], got dtype {images.dtype} (convert uint8 with `images.float() / 255`)"
            )

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"family={c.family}, backend={c.backend}, hidden_size={self.hidden_size}, "
            f"num_layers={self.num_layers}, patch_size={self.patch_size}, image_size={self.image_size}, "
            f"compute_dtype={c.compute_dtype}"
        )
