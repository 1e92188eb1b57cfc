"""transformers-backed frozen VFMs: SigLIP / SigLIP2-FixRes (`SiglipVisionModel`) and DINOv2 (`Dinov2Model`).

The SigLIP2 FixRes checkpoints (e.g. `google/siglip2-large-patch16-512`) are SigLIP-v1 graphs, so
they load with `SiglipVisionModel`, which also extracts the vision tower from a full text+vision
`SiglipModel` folder (ecosystem.md §1.1). The NaFlex `Siglip2VisionModel` is a different family
and is not used by VFM-VAE (tokenizer.md §1).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import Dinov2Config, Dinov2Model, SiglipVisionConfig, SiglipVisionModel

from vfmvae.vfm.base import FrozenVFM
from vfmvae.vfm.config import VFMConfig

# Architecture fields that must agree between a preset and a loaded checkpoint.
_ARCH_FIELDS = ("hidden_size", "num_layers", "num_heads", "mlp_hidden_size", "patch_size", "image_size")


def _check_same_architecture(preset: VFMConfig, loaded: VFMConfig, where: str) -> None:
    diffs = {
        f: (getattr(preset, f), getattr(loaded, f)) for f in _ARCH_FIELDS if getattr(preset, f) != getattr(loaded, f)
    }
    if diffs:
        text = ", ".join(f"{k}: preset {a} vs checkpoint {b}" for k, (a, b) in diffs.items())
        raise ValueError(
            f"checkpoint {where} does not match the chosen VFM preset ({text}); "
            "pick the matching preset or pass `config` overrides"
        )


def _load_kwargs(allow_download: bool, attn_implementation: str) -> dict[str, Any]:
    # transformers 5 defaults to dtype="auto"; frozen weights are kept in float32 and the compute
    # precision comes from `compute_dtype` (autocast), as in the official wrapper.
    return dict(
        local_files_only=not allow_download,
        dtype=torch.float32,
        attn_implementation=attn_implementation,
        output_loading_info=True,
    )


def _raise_on_missing(info: dict, where: str) -> None:
    missing = sorted(info.get("missing_keys", ()))
    mismatched = sorted(str(m) for m in info.get("mismatched_keys", ()))
    if missing or mismatched:
        raise ValueError(f"loading {where}: missing keys {missing[:20]} / shape-mismatched keys {mismatched[:20]}")


class SiglipVFM(FrozenVFM):
    """Frozen SigLIP vision tower; no CLS token, so tokens are the whole sequence `(B, N, D)`.

    Position embeddings are interpolated for other resolutions (`interpolate_pos_encoding=True`,
    always passed, as in the official `SigLIP2Encoder`; a no-op at the native size).
    """

    def __init__(self, backbone: SiglipVisionModel, config: VFMConfig):
        super().__init__(config, num_prefix_tokens=0)
        self.backbone = backbone
        self.freeze()

    @staticmethod
    def hf_config(cfg: VFMConfig) -> SiglipVisionConfig:
        return SiglipVisionConfig(
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.mlp_hidden_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            num_channels=3,
            image_size=cfg.image_size,
            patch_size=cfg.patch_size,
            hidden_act=cfg.hidden_act,
            layer_norm_eps=cfg.layer_norm_eps,
            attention_dropout=0.0,
            vision_use_head=cfg.keep_head,
            attn_implementation=cfg.attn_implementation,
            **cfg.extra,
        )

    @staticmethod
    def config_from_hf(hf: SiglipVisionConfig, base: VFMConfig) -> VFMConfig:
        """A `VFMConfig` describing an existing HF SigLIP vision config (preprocessing from `base`)."""
        return base.replace(
            hidden_size=hf.hidden_size,
            num_layers=hf.num_hidden_layers,
            num_heads=hf.num_attention_heads,
            mlp_hidden_size=hf.intermediate_size,
            patch_size=hf.patch_size,
            image_size=hf.image_size,
            hidden_act=hf.hidden_act,
            layer_norm_eps=hf.layer_norm_eps,
            keep_head=bool(getattr(hf, "vision_use_head", True)),
        )

    @classmethod
    def from_config(cls, cfg: VFMConfig) -> SiglipVFM:
        """Random init from the config (tests, meta-device parameter counts)."""
        return cls(SiglipVisionModel(cls.hf_config(cfg)), cfg)

    @classmethod
    def from_pretrained(cls, path: str, cfg: VFMConfig, allow_download: bool = False) -> SiglipVFM:
        """Load a `save_pretrained` folder (vision-only or full text+vision) or, if allowed, a hub id."""
        kw = _load_kwargs(allow_download, cfg.attn_implementation)
        hf_cfg = SiglipVisionConfig.from_pretrained(path, local_files_only=kw["local_files_only"])
        hf_cfg.vision_use_head = cfg.keep_head  # drop the unused MAP head unless asked for
        _check_same_architecture(cfg, cls.config_from_hf(hf_cfg, cfg), path)
        model, info = SiglipVisionModel.from_pretrained(path, config=hf_cfg, **kw)
        _raise_on_missing(info, path)
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


class HFDinov2VFM(FrozenVFM):
    """Frozen DINOv2 through transformers `Dinov2Model`: token 0 is CLS, then the patch grid.

    `Dinov2Model` interpolates its position embeddings for any input size by itself. `-1` is
    `last_hidden_state` (after the final LayerNorm), as `x_norm_patchtokens` in the hub model.
    """

    def __init__(self, backbone: Dinov2Model, config: VFMConfig):
        super().__init__(config, num_prefix_tokens=1)
        self.backbone = backbone
        self.freeze()

    @staticmethod
    def hf_config(cfg: VFMConfig) -> Dinov2Config:
        if cfg.mlp_hidden_size % cfg.hidden_size:
            raise ValueError(
                f"DINOv2 needs mlp_hidden_size to be a multiple of hidden_size, got "
                f"{cfg.mlp_hidden_size} / {cfg.hidden_size}"
            )
        return Dinov2Config(
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_hidden_size // cfg.hidden_size,
            patch_size=cfg.patch_size,
            image_size=cfg.image_size,
            layerscale_value=cfg.layerscale_value,
            layer_norm_eps=cfg.layer_norm_eps,
            hidden_act=cfg.hidden_act,
            use_swiglu_ffn=False,
            attn_implementation=cfg.attn_implementation,
            **cfg.extra,
        )

    @staticmethod
    def config_from_hf(hf: Dinov2Config, base: VFMConfig) -> VFMConfig:
        return base.replace(
            hidden_size=hf.hidden_size,
            num_layers=hf.num_hidden_layers,
            num_heads=hf.num_attention_heads,
            mlp_hidden_size=int(hf.hidden_size * hf.mlp_ratio),
            patch_size=hf.patch_size,
            image_size=hf.image_size,
            layer_norm_eps=hf.layer_norm_eps,
        )

    @classmethod
    def from_config(cls, cfg: VFMConfig) -> HFDinov2VFM:
        return cls(Dinov2Model(cls.hf_config(cfg)), cfg)

    @classmethod
    def from_pretrained(cls, path: str, cfg: VFMConfig, allow_download: bool = False) -> HFDinov2VFM:
        kw = _load_kwargs(allow_download, cfg.attn_implementation)
        hf_cfg = Dinov2Config.from_pretrained(path, local_files_only=kw["local_files_only"])
        if getattr(hf_cfg, "use_swiglu_ffn", False):
            raise ValueError(f"{path}: SwiGLU DINOv2 (giant) is not supported by this wrapper")
        _check_same_architecture(cfg, cls.config_from_hf(hf_cfg, cfg), path)
        model, info = Dinov2Model.from_pretrained(path, config=hf_cfg, **kw)
        _raise_on_missing(info, path)
        return cls(model, cfg)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        self.backbone.save_pretrained(str(path))

    def _run_backbone(self, pixel_values, hidden_indices, need_final):
        out = self.backbone(pixel_values=pixel_values, output_hidden_states=bool(hidden_indices), return_dict=True)
        hidden = {i: out.hidden_states[i] for i in hidden_indices}
        return hidden, out.last_hidden_state if need_final else None
