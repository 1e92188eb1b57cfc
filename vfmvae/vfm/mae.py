"""MAE encoders through transformers `ViTMAEModel` (e.g. `facebook/vit-mae-large`), never masking.

Official wrapper (`networks/utils/vfms/mae_utils.py`): bilinear `scale_factor` resize (antialias
only when shrinking), ImageNet mean/std, patch 16; layer 0 = the embeddings output (CLS + fixed
sin-cos table), k = block k (forward hooks), -1 = `last_hidden_state` (after the final LayerNorm);
CLS dropped. The equivariance prior branch downsizes bilinearly without antialias.

What we do differently (declared in the README's deviations):

- **Spatial order.** `ViTMAEEmbeddings.random_masking` shuffles the patch tokens by
  `argsort(torch.rand(B, L))` even at `mask_ratio=0`, and the official wrapper never restores the
  order, so its token grid is scrambled per sample (an official bug). We pass `noise=arange(L)`,
  the identity permutation: tokens stay in row-major grid order. The official behaviour can be
  reproduced for tests only with `reproduce_official_token_shuffle(noise)`.
- **No masking.** `mask_ratio` is forced to 0 when the model is built (the released checkpoints say
  0.75, with which the official path keeps a quarter of the tokens and breaks the grid).
- **Native size.** The official wrapper never resamples the position table, so MAE runs only at
  its native token grid (`supports_dynamic_resolution = False`; equivariance regularisation that
  resizes the input is refused, see `vfmvae.vfm.check_equivariance_supported`). The table is a fixed
  2-D sin-cos table, never trained, so a checkpoint can be loaded at another native `image_size`:
  the table is then rebuilt for that grid (the tokenizer preset runs MAE-L at 512 px).
- Layers -k < -1 are refused: the official `blocks[idx - 1]` makes -2 the *third*-last block.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import ViTMAEConfig, ViTMAEModel
from transformers.models.vit_mae.modeling_vit_mae import ViTMAEEmbeddings

from vfmvae.vfm.base import FrozenVFM, resolve_layer
from vfmvae.vfm.config import VFMConfig
from vfmvae.vfm.hf_utils import (
    check_same_architecture,
    load_kwargs,
    raise_on_missing,
    vit_config_fields,
    vit_config_kwargs,
)

log = logging.getLogger(__name__)
_POSITION_KEY = "embeddings.position_embeddings"


class MAEVFM(FrozenVFM):
    """Frozen ViT-MAE encoder, tokens in grid order, fixed native resolution (module doc)."""

    resize_mode = "bilinear"
    eq_prior_resize = ("bilinear", False)
    supports_dynamic_resolution = False

    def __init__(self, backbone: ViTMAEModel, config: VFMConfig):
        super().__init__(config, num_prefix_tokens=1)
        backbone.config.mask_ratio = 0.0  # shared with the embeddings: encode every token
        self.backbone = backbone
        self._official_shuffle_noise: torch.Tensor | None = None
        self.freeze()

    def resolve_layer(self, index: int) -> int | str:
        if isinstance(index, int) and not isinstance(index, bool) and index < -1:
            raise ValueError(
                f"layer index {index}: the MAE wrapper takes 0..{self.num_layers} and -1 only (the official "
                f"`blocks[idx - 1]` would silently give block {self.num_layers + index}); use a positive index"
            )
        return resolve_layer(index, self.num_layers)

    # ----------------------------------------------------------------- building
    @staticmethod
    def hf_config(cfg: VFMConfig) -> ViTMAEConfig:
        return ViTMAEConfig(**vit_config_kwargs(cfg), mask_ratio=0.0, **cfg.extra)

    @staticmethod
    def config_from_hf(hf: ViTMAEConfig, base: VFMConfig) -> VFMConfig:
        return base.replace(**vit_config_fields(hf))

    @staticmethod
    def sincos_table(hf_cfg: ViTMAEConfig) -> torch.Tensor:
        """The fixed `(1, 1 + n, D)` 2-D sin-cos table of MAE for `hf_cfg`'s grid (transformers' own formula)."""
        fresh = ViTMAEEmbeddings(hf_cfg)
        fresh.initialize_weights()
        return fresh.position_embeddings.detach()

    @classmethod
    def from_config(cls, cfg: VFMConfig) -> MAEVFM:
        hf_cfg = cls.hf_config(cfg)
        model = ViTMAEModel(hf_cfg)
        # transformers 5 leaves a fresh ViTMAEModel's table at zero (its init returns early once the patch
        # projection is flagged initialised); MAE defines it as the sin-cos table, so set it.
        with torch.no_grad():
            model.embeddings.position_embeddings.copy_(cls.sincos_table(hf_cfg))
        return cls(model, cfg)

    @classmethod
    def from_pretrained(cls, path: str, cfg: VFMConfig, allow_download: bool = False) -> MAEVFM:
        """Load a `save_pretrained` folder (or `ViTMAEForPreTraining` checkpoint); see the module doc for sizes."""
        kw = load_kwargs(allow_download, cfg.attn_implementation)
        hf_cfg = ViTMAEConfig.from_pretrained(path, local_files_only=kw["local_files_only"])
        fields = ("hidden_size", "num_layers", "num_heads", "mlp_hidden_size", "patch_size")
        check_same_architecture(cfg, cls.config_from_hf(hf_cfg, cfg), path, fields)
        resized = hf_cfg.image_size != cfg.image_size
        hf_cfg.image_size, hf_cfg.mask_ratio = cfg.image_size, 0.0
        model, info = ViTMAEModel.from_pretrained(path, config=hf_cfg, ignore_mismatched_sizes=resized, **kw)
        raise_on_missing(info, path, allowed_mismatch=(_POSITION_KEY,) if resized else ())
        if resized:
            # The sin-cos table is a function of the grid only: rebuild it (HF left it re-initialised or stale).
            with torch.no_grad():
                model.embeddings.position_embeddings.copy_(cls.sincos_table(hf_cfg))
            log.info("MAE %s: fixed sin-cos position table rebuilt for a %d px native size", path, cfg.image_size)
        return cls(model, cfg)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        self.backbone.save_pretrained(str(path))

    # ----------------------------------------------------------------- forward
    @contextmanager
    def reproduce_official_token_shuffle(self, noise: torch.Tensor) -> Iterator[None]:
        """TEST ONLY: shuffle the patch tokens by `argsort(noise)` and keep them shuffled, as the official
        wrapper does (its bug, see the module doc). `noise`: `(B, L)`, the official `torch.rand(B, L)` draw."""
        self._official_shuffle_noise = noise
        try:
            yield
        finally:
            self._official_shuffle_noise = None

    def _run_backbone(self, pixel_values, hidden_indices, need_final):
        m = self.backbone
        B = pixel_values.shape[0]
        L = (pixel_values.shape[-2] // self.patch_size) * (pixel_values.shape[-1] // self.patch_size)
        noise = self._official_shuffle_noise
        if noise is None:  # ascending noise = identity permutation: grid order kept
            noise = torch.arange(L, device=pixel_values.device, dtype=torch.float32).expand(B, L)
        x, _, _ = m.embeddings(pixel_values, noise=noise.to(pixel_values.device))
        hidden = {0: x} if 0 in hidden_indices else {}
        # Same steps as `ViTMAEModel.forward` (no attention mask), keeping every block output.
        depth = self.num_layers if need_final else max(hidden_indices)
        for k in range(1, depth + 1):
            x = m.layers[k - 1](x, None)
            if k in hidden_indices:
                hidden[k] = x
        return hidden, m.layernorm(x) if need_final else None


__all__ = ["MAEVFM"]
