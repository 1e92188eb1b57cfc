"""SigLIP / SigLIP2-FixRes vision tower (`SiglipVisionModel`): the paper's tokenizer encoder.

The SigLIP2 FixRes checkpoints (e.g. `google/siglip2-large-patch16-512`) are SigLIP-v1 graphs, so
they load with `SiglipVisionModel`, which also extracts the vision tower from a full text+vision
`SiglipModel` folder. The NaFlex `Siglip2VisionModel` is a different family and is not used by
VFM-VAE (docs/design.md, "Frozen networks").

Official wrapper (`networks/utils/vfms/siglip2_utils.py`): bilinear `scale_factor` resize
(antialias only when shrinking), mean = std = 0.5, `interpolate_pos_encoding=True` (dynamic
resolution), layers as in `vfmvae.vfm.base`; the equivariance prior branch downsizes bilinearly
with antialias. No CLS token.
"""

from __future__ import annotations

import os

from transformers import SiglipVisionConfig, SiglipVisionModel

from vfmvae.vfm.base import FrozenVFM
from vfmvae.vfm.config import VFMConfig
from vfmvae.vfm.hf_utils import (
    check_same_architecture,
    load_kwargs,
    raise_on_missing,
    vit_config_fields,
    vit_config_kwargs,
)


class SiglipVFM(FrozenVFM):
    """Frozen SigLIP vision tower; no CLS token, so tokens are the whole sequence `(B, N, D)`.

    Position embeddings are interpolated for other resolutions (`interpolate_pos_encoding=True`,
    always passed, as in the official `SigLIP2Encoder`; a no-op at the native size).
    """

    resize_mode = "bilinear"
    eq_prior_resize = ("bilinear", True)
    supports_dynamic_resolution = True

    def __init__(self, backbone: SiglipVisionModel, config: VFMConfig):
        super().__init__(config, num_prefix_tokens=0)
        self.backbone = backbone
        self.freeze()

    @staticmethod
    def hf_config(cfg: VFMConfig) -> SiglipVisionConfig:
        return SiglipVisionConfig(
            **vit_config_kwargs(cfg), num_channels=3, attention_dropout=0.0, vision_use_head=cfg.keep_head, **cfg.extra
        )

    @staticmethod
    def config_from_hf(hf: SiglipVisionConfig, base: VFMConfig) -> VFMConfig:
        """A `VFMConfig` describing an existing HF SigLIP vision config (preprocessing from `base`)."""
        return base.replace(**vit_config_fields(hf), keep_head=bool(getattr(hf, "vision_use_head", True)))

    @classmethod
    def from_config(cls, cfg: VFMConfig) -> SiglipVFM:
        """Random init from the config (tests, meta-device parameter counts)."""
        return cls(SiglipVisionModel(cls.hf_config(cfg)), cfg)

    @classmethod
    def from_pretrained(cls, path: str, cfg: VFMConfig, allow_download: bool = False) -> SiglipVFM:
        """Load a `save_pretrained` folder (vision-only or full text+vision) or, if allowed, a hub id."""
        kw = load_kwargs(allow_download, cfg.attn_implementation)
        hf_cfg = SiglipVisionConfig.from_pretrained(path, local_files_only=kw["local_files_only"])
        hf_cfg.vision_use_head = cfg.keep_head  # drop the unused MAP head unless asked for
        check_same_architecture(cfg, cls.config_from_hf(hf_cfg, cfg), path)
        model, info = SiglipVisionModel.from_pretrained(path, config=hf_cfg, **kw)
        raise_on_missing(info, path)
        return cls(model, cfg)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write a transformers folder (`config.json` + `model.safetensors`) that `build_vfm` reloads."""
        self.backbone.save_pretrained(str(path))

    def _run_backbone(self, pixel_values, hidden_indices, need_final):
        out = self.backbone(
            pixel_values=pixel_values,
            interpolate_pos_encoding=True,
            output_hidden_states=bool(hidden_indices),
            return_dict=True,
        )
        hidden = {i: out.hidden_states[i] for i in hidden_indices}
        return hidden, out.last_hidden_state if need_final else None
