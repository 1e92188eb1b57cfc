"""The Qwen2.5-VL vision tower (transformers `Qwen2_5_VisionTransformerPretrainedModel`).

Official wrapper (`networks/utils/vfms/qwen_utils.py`): bicubic `scale_factor` resize (antialias
only when shrinking), CLIP mean/std, patch 14; each image becomes one frame repeated to the
temporal patch size 2 and is flattened into patch vectors in 2x2 merge-unit order
`(row/2, col/2, dy, dx)`, with `grid_thw = (1, H/14, W/14)`. Layer 0 = `patch_embed` output,
k = block k (forward hooks), -1 = the merger output (RMSNorm + MLP over 2x2 units). The
equivariance prior branch downsizes bicubically with antialias.

The official code cannot run this tower (no fixture exists): with transformers 5 the tower returns
an output object the wrapper reshapes; the merger halves the token grid while the Generator's
`patch_resolutions` assumes the unmerged one; and its block hooks return tokens in the tower's
*window* order, without a batch dimension. We implement the evident intent (declared in the README):

- every layer is returned as `(B, N, D)` in row-major order of **its own grid**: blocks and layer 0
  on the patch grid `(H/14, W/14)` (width `hidden_size`), -1 on the merged grid `(H/28, W/28)`
  (width `out_hidden_size`); `token_stride(layer)` / `layer_dim(layer)` say which;
- inputs must be multiples of 28 (patch x merge); any such size works (2-D RoPE, windows padded),
  so the tower supports dynamic resolution;
- a tokenizer must take layers of one grid and width (`check_layers_share_grid`): either -1 alone
  or block outputs only (the preset takes blocks).

On disk: a full Qwen2.5-VL folder (`config.json` with `vision_config`, safetensors shards with the
tower under `visual.` or `model.visual.`; only those tensors are read) or a tower folder written by
`save_pretrained`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import Qwen2_5_VLVisionConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VisionTransformerPretrainedModel,
    get_vision_window_index,
)

from vfmvae.vfm.base import FINAL, FrozenVFM
from vfmvae.vfm.config import VFMConfig
from vfmvae.vfm.hf_utils import check_same_architecture

_TOWER_PREFIXES = ("model.visual.", "visual.")  # transformers 5 saves / released (transformers 4) checkpoints
_EXTRA_KEYS = ("out_hidden_size", "spatial_merge_size", "temporal_patch_size", "window_size", "fullatt_block_indexes")


class Qwen25VLVisionVFM(FrozenVFM):
    """Frozen Qwen2.5-VL vision tower with per-layer token grids (module doc). No CLS token."""

    resize_mode = "bicubic"
    eq_prior_resize = ("bicubic", True)
    supports_dynamic_resolution = True

    def __init__(self, backbone: Qwen2_5_VisionTransformerPretrainedModel, config: VFMConfig):
        super().__init__(config, num_prefix_tokens=0)
        self.backbone = backbone
        self.merge = int(backbone.config.spatial_merge_size)
        self.temporal_patch_size = int(backbone.config.temporal_patch_size)
        self.out_hidden_size = int(backbone.config.out_hidden_size)
        self.freeze()

    # ----------------------------------------------------------------- grids
    @property
    def input_multiple(self) -> int:
        return self.patch_size * self.merge

    def token_stride(self, layer: int) -> int:
        return self.patch_size * (self.merge if self.resolve_layer(layer) == FINAL else 1)

    def layer_dim(self, layer: int) -> int:
        return self.out_hidden_size if self.resolve_layer(layer) == FINAL else self.hidden_size

    # ----------------------------------------------------------------- building
    @staticmethod
    def hf_config(cfg: VFMConfig) -> Qwen2_5_VLVisionConfig:
        missing = [k for k in ("out_hidden_size",) if k not in cfg.extra]
        if missing:
            raise ValueError(f"a Qwen2.5-VL VFMConfig needs {missing} in `extra` (the merger output width)")
        hf = Qwen2_5_VLVisionConfig(
            depth=cfg.num_layers,
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.mlp_hidden_size,
            num_heads=cfg.num_heads,
            patch_size=cfg.patch_size,
            hidden_act=cfg.hidden_act,
            **cfg.extra,
        )
        hf._attn_implementation = cfg.attn_implementation
        return hf

    @staticmethod
    def config_from_hf(hf: Qwen2_5_VLVisionConfig | dict, base: VFMConfig) -> VFMConfig:
        d = hf.to_dict() if hasattr(hf, "to_dict") else dict(hf)
        return base.replace(
            hidden_size=int(d["hidden_size"]),
            num_layers=int(d["depth"]),
            num_heads=int(d["num_heads"]),
            mlp_hidden_size=int(d["intermediate_size"]),
            patch_size=int(d.get("patch_size", 14)),
            hidden_act=d.get("hidden_act", base.hidden_act),
            extra={k: (list(d[k]) if isinstance(d[k], tuple) else d[k]) for k in _EXTRA_KEYS if k in d},
        )

    @classmethod
    def from_config(cls, cfg: VFMConfig) -> Qwen25VLVisionVFM:
        return cls(Qwen2_5_VisionTransformerPretrainedModel(cls.hf_config(cfg)), cfg)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, cfg: VFMConfig) -> Qwen25VLVisionVFM:
        """A full Qwen2.5-VL folder or a tower folder (module doc); strict, reads only the tower tensors."""
        from safetensors import safe_open

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not a Qwen2.5-VL folder (config.json is missing)")
        meta = json.loads((path / "config.json").read_text())
        vision = meta.get("vision_config", meta)
        loaded = cls.config_from_hf(vision, cfg)
        fields = ("hidden_size", "num_layers", "num_heads", "mlp_hidden_size", "patch_size")
        check_same_architecture(cfg, loaded, str(path), fields)
        if loaded.extra.get("out_hidden_size") != cfg.extra.get("out_hidden_size"):
            raise ValueError(
                f"{path}: merger width {loaded.extra.get('out_hidden_size')} differs from the preset's "
                f"{cfg.extra.get('out_hidden_size')} (3B: 2048, 7B: 3584, 72B: 8192); pick the matching preset"
            )
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{path}: no *.safetensors weights (Qwen2.5-VL is released as safetensors)")
        model = Qwen2_5_VisionTransformerPretrainedModel(cls.hf_config(loaded.replace(compute_dtype=cfg.compute_dtype)))
        own = set(model.state_dict())
        sd: dict[str, torch.Tensor] = {}
        for file in files:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    prefix = next((p for p in _TOWER_PREFIXES if key.startswith(p)), "")
                    name = key[len(prefix) :]
                    if (prefix or vision is meta) and name in own:
                        sd[name] = f.get_tensor(key).float()
        missing = sorted(own - set(sd))
        if missing:
            raise ValueError(f"{path}: the vision tower tensors {missing[:20]} are missing")
        model.load_state_dict(sd, strict=True)
        return cls(model, cfg)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write a tower folder (`config.json` of the vision config + `model.safetensors`)."""
        self.backbone.save_pretrained(str(path))

    # ----------------------------------------------------------------- forward
    def _patchify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`(B, C, H, W)` -> `(B*h*w, C*T*p*p)` patch vectors in merge-unit order (official preprocessing)."""
        B, C, H, W = pixel_values.shape
        p, m, t = self.patch_size, self.merge, self.temporal_patch_size
        x = pixel_values[:, None].expand(B, t, C, H, W)  # one frame repeated to the temporal patch size
        x = x.reshape(B, t, C, H // (p * m), m, p, W // (p * m), m, p)
        x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (B, rows/m, cols/m, dy, dx, C, T, p, p)
        return x.reshape(B * (H // p) * (W // p), C * t * p * p)

    def _to_rows(self, tokens: torch.Tensor, B: int, h: int, w: int) -> torch.Tensor:
        """Merge-unit order `(B*h*w, D)` -> row-major `(B, h*w, D)`."""
        m = self.merge
        x = tokens.reshape(B, h // m, w // m, m, m, -1).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(B, h * w, -1)

    def _run_backbone(self, pixel_values, hidden_indices, need_final):
        tower = self.backbone
        B, _, H, W = pixel_values.shape
        h, w = H // self.patch_size, W // self.patch_size
        grid_thw = torch.tensor([[1, h, w]] * B, device=pixel_values.device)
        captured: dict[int, torch.Tensor] = {}
        modules = {k: (tower.patch_embed if k == 0 else tower.blocks[k - 1]) for k in hidden_indices}
        hooks = [
            mod.register_forward_hook(lambda _m, _i, out, k=k: captured.__setitem__(k, out))
            for k, mod in modules.items()
        ]
        try:
            out = tower(self._patchify(pixel_values), grid_thw=grid_thw)
        finally:
            for hook in hooks:
                hook.remove()
        # Blocks see the merge units in window order: undo it before restoring the grid.
        window_index, _ = get_vision_window_index(grid_thw.cpu(), self.merge, tower.window_size, self.patch_size)
        reverse = torch.argsort(window_index).to(pixel_values.device)
        hidden = {}
        for k, x in captured.items():
            if k > 0:
                x = x.reshape(-1, self.merge**2, x.shape[-1])[reverse].reshape(-1, x.shape[-1])
            hidden[k] = self._to_rows(x, B, h, w)
        final = out.pooler_output.reshape(B, (h // self.merge) * (w // self.merge), -1) if need_final else None
        return hidden, final


__all__ = ["Qwen25VLVisionVFM"]
