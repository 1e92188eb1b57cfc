"""Official `tianciB/VFM-VAE` Generator checkpoints -> our modules (docs/design.md, "Deviations from the official code").

`from_official(state_dict, generator_kwargs, vfm_config)` builds a `VFMVAE` from the official
constructor kwargs and the VFM's config dict (any official VFM family: SigLIP2, DINOv2, EVA-CLIP,
MAE, Qwen2.5-VL; `config_from_official` resolves the family and the VFM's patch size), and loads
the official state dict. Every official
key is mapped or deliberately ignored (`IGNORED_KEYS` below, each with its reason); anything else
is an error that lists the keys. Missing keys are an error too.

Release files: `load_official_state_dict(path_or_obj)` accepts the released `.pth` (a dict whose
`"G_ema"` entry is the state dict, as read by the official `tools/reconstruct/reconstruct.py`), a
dict with `"ema"`/`"model"`/`"state_dict"`, a pickled module, or a plain state dict.

Key map (official -> ours):
    vfm_encoder.encoder.*                             -> `vfm` (by vfmvae.vfm.load_official_vfm_state_dict)
    ldm_adapter.patch_quants.{i}.0.*                  -> head.level_projections.{i}.*
    ldm_adapter.final_quant.*                         -> head.final_projection.*
    ldm_adapter.linear_proj.weight                    -> head.vf_projection.weight
    ldm_adapter.post_quant.*                          -> decoder.lift.*
    mapping.mlp.fc{k}.*, mapping.x_avg                -> decoder.mapping.fc{k}.*, decoder.mapping.w_avg
    synthesis.z_convs.{i}.{a|b}.*                     -> decoder.synthesis.fusion.{i}.{expand|refine}.*
    synthesis.blocks.{i}.seperate_upsample_conv.*     -> decoder.synthesis.blocks.{i}.upsample.*
    synthesis.blocks.{i}.conv0 / convs1.{k}           -> decoder.synthesis.blocks.{i}.layers.0 / layers.{k+1}
    synthesis.blocks.{i}.last_upsample_conv.*         -> decoder.synthesis.blocks.{i}.skip_upsample.*
    synthesis.blocks.{i}.self_attns.{k}.*             -> decoder.synthesis.blocks.{i}.attention.{k}.*
    synthesis.blocks.{i}.cross_attns.{k}.*            -> decoder.synthesis.blocks.{i}.cross_attention.{k}.*
    mapping.embed.*  (cls2id)                         -> decoder.mapping.embed.*
    vfm_encoder.encoder.text_model.* (text, cls2text) -> `text_encoder` (by vfmvae.vfm.siglip2_text)
    synthesis.blocks.{i}.torgb.*                      -> decoder.synthesis.blocks.{i}.to_rgb.*
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .config import VFMVAEConfig
from .official_config import _vfm_geometry, conditioning_from_official, resolve_vfm_family

VFM_OFFICIAL_PREFIX = "vfm_encoder.encoder."  # the frozen VFM; mapped by the VFM module's own loader

# Official keys we deliberately drop here, with the reason.
IGNORED_KEYS: dict[str, str] = {
    r"\.attn\.zero_k_bias$": "fixed all-zero key bias buffer (checked to be zero), built in on the fly",
    r"\.blur_weight$": "fixed binomial blur kernel, recomputed (checked to be equal)",
}
VF_PROJECTION_KEY = "ldm_adapter.linear_proj.weight"
# Keys of encoder-side parts, dropped on the decoder-only path.
ENCODER_KEYS = (r"^vfm_encoder\.", r"^ldm_adapter\.(patch_quants|final_quant|linear_proj)[.]")

_BLOCK_RULES = [  # within synthesis.blocks.{i}.
    (r"^seperate_upsample_conv\.", "upsample."),
    (r"^last_upsample_conv\.", "skip_upsample."),
    (r"^conv0\.", "layers.0."),
    (r"^self_attns\.(\d+)\.ff\.0\.gamma$", r"attention.\1.ff.norm.gamma"),
    (r"^self_attns\.(\d+)\.ff\.1\.", r"attention.\1.ff.fc1."),
    (r"^self_attns\.(\d+)\.ff\.3\.", r"attention.\1.ff.fc2."),
    (r"^self_attns\.(\d+)\.attn\.", r"attention.\1.attn."),
    (r"^cross_attns\.(\d+)\.ff\.0\.gamma$", r"cross_attention.\1.ff.norm.gamma"),
    (r"^cross_attns\.(\d+)\.ff\.1\.", r"cross_attention.\1.ff.fc1."),
    (r"^cross_attns\.(\d+)\.ff\.3\.", r"cross_attention.\1.ff.fc2."),
    (r"^cross_attns\.(\d+)\.attn\.", r"cross_attention.\1.attn."),
    (r"^torgb\.affine\.proj\.", "to_rgb.style.fc."),
    (r"^torgb\.", "to_rgb."),
]
_CONVNEXT_RULES = [  # within a ConvNeXt layer
    (r"^affine_pw1\.proj\.", "style.fc."),
    (r"^pwconv1\.weight$", "pwconv1_weight"),
    (r"^pwconv1\.bias$", "pwconv1_bias"),
    (r"^gamma$", "layer_scale"),
]
_ATTNPROJ_RULES = [  # within an AttnProjectionBlock
    (r"^norm1\.", "attn_norm."),
    (r"^norm2\.", "mlp_norm."),
    (r"^norm3\.", "shortcut_norm."),
    (r"^proj\.", "shortcut."),
    (r"^attn\.proj\.", "attn.out."),
]


def _apply(rules, key: str) -> str:
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return key


def _attnproj(rest: str) -> str:
    m = re.match(r"^blocks\.(\d+)\.(.*)$", rest)
    if not m:
        return "?" + rest
    return f"blocks.{m.group(1)}." + _apply(_ATTNPROJ_RULES, m.group(2))


def _block(rest: str) -> str:
    m = re.match(r"^convs1\.(\d+)\.(.*)$", rest)
    if m:
        return f"layers.{int(m.group(1)) + 1}." + _apply(_CONVNEXT_RULES, m.group(2))
    m = re.match(r"^conv0\.(.*)$", rest)
    if m:
        return "layers.0." + _apply(_CONVNEXT_RULES, m.group(1))
    return _apply(_BLOCK_RULES, rest)


def map_key(key: str, fusion_slots: Mapping[str, dict[str, str]]) -> str | None:
    """Our key for one official non-VFM key, or None if it has no rule."""
    rules = [
        (r"^ldm_adapter\.patch_quants\.(\d+)\.0\.(.*)$", lambda m: f"head.level_projections.{m[1]}.{_attnproj(m[2])}"),
        (r"^ldm_adapter\.final_quant\.(.*)$", lambda m: f"head.final_projection.{_attnproj(m[1])}"),
        (r"^ldm_adapter\.linear_proj\.weight$", lambda m: "head.vf_projection.weight"),
        (r"^ldm_adapter\.post_quant\.(.*)$", lambda m: f"decoder.lift.{_attnproj(m[1])}"),
        (r"^mapping\.mlp\.(fc\d+\.(weight|bias))$", lambda m: f"decoder.mapping.{m[1]}"),
        (r"^mapping\.x_avg$", lambda m: "decoder.mapping.w_avg"),
        (r"^mapping\.embed\.(weight|bias)$", lambda m: f"decoder.mapping.embed.{m[1]}"),
        (
            r"^synthesis\.z_convs\.(\d+)\.(\d+)\.(.*)$",
            lambda m: (
                f"decoder.synthesis.fusion.{m[1]}.{fusion_slots[m[1]][m[2]]}.{m[3]}"
                if m[2] in fusion_slots.get(m[1], {})
                else None
            ),
        ),
        (r"^synthesis\.blocks\.(\d+)\.(.*)$", lambda m: f"decoder.synthesis.blocks.{m[1]}.{_block(m[2])}"),
    ]
    for pattern, fn in rules:
        m = re.match(pattern, key)
        if m:
            out = fn(m)
            return None if out is None or "?" in out else out
    return None


def _fusion_slots(keys) -> dict[str, dict[str, str]]:
    """Official z_convs Sequentials hold (optional PixelUnshuffle, conv-seq, optional PixelShuffle, conv-seq);
    the first parameterised position is our `expand`, the second our `refine`."""
    pos: dict[str, set[int]] = {}
    for k in keys:
        m = re.match(r"^synthesis\.z_convs\.(\d+)\.(\d+)\.", k)
        if m:
            pos.setdefault(m[1], set()).add(int(m[2]))
    return {i: dict(zip([str(p) for p in sorted(s)], ["expand", "refine"])) for i, s in pos.items()}


def _reshape_like(value: torch.Tensor, target: torch.Tensor, key: str) -> torch.Tensor:
    if value.shape == target.shape:
        return value
    if value.numel() == target.numel() and key.endswith(("pwconv1_bias", "to_rgb.bias")):
        return value.reshape(target.shape)  # official stores these biases as (1, C, 1, 1)
    raise ValueError(f"shape mismatch for {key}: official {tuple(value.shape)} vs ours {tuple(target.shape)}")


def _check_fixed_buffer(key: str, value: torch.Tensor, model: nn.Module, fusion_slots) -> None:
    if key.endswith("zero_k_bias"):
        if value.abs().max() != 0:
            raise ValueError(f"{key}: the official zero k-bias is not zero; refusing to drop it")
    elif key.endswith("blur_weight"):
        ours = map_key(key.replace("blur_weight", "depthwise.weight"), fusion_slots)
        mod_key = ours.rsplit(".depthwise.weight", 1)[0]
        kernel = model.get_submodule(mod_key).blur_kernel
        if kernel.shape != value.shape or not torch.allclose(kernel, value.to(kernel)):
            raise ValueError(f"{key}: official blur kernel differs from the recomputed binomial kernel")


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module, decoder_only: bool = False
) -> dict[str, torch.Tensor]:
    """Map the official head/decoder keys onto `model`'s names (VFM keys are left to the VFM loader).

    Raises `KeyError` listing unknown official keys and keys of `model` left unset.
    """
    ours_sd = model.state_dict()
    slots = _fusion_slots(state_dict)
    mapped: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        if key.startswith(VFM_OFFICIAL_PREFIX):
            continue
        if key == VF_PROJECTION_KEY and "head.vf_projection.weight" not in ours_sd:
            continue  # stage 0-1 training head; dropped when use_vf_loss is off (official loads strict=False)
        if decoder_only and any(re.search(p, key) for p in ENCODER_KEYS):
            continue
        if any(re.search(p, key) for p in IGNORED_KEYS):
            _check_fixed_buffer(key, value, model, slots)
            continue
        new = map_key(key, slots)
        if new is None or new not in ours_sd:
            unknown.append(key if new is None else f"{key} (-> {new}, not in our model)")
            continue
        mapped[new] = _reshape_like(value, ours_sd[new], new)
    if unknown:
        raise KeyError(f"from_official: {len(unknown)} unknown official keys: {unknown}")
    missing = sorted(k for k in ours_sd if k not in mapped and not k.startswith(("vfm.", "text_encoder.")))
    if missing:
        raise KeyError(f"from_official: {len(missing)} of our keys have no official counterpart: {missing}")
    return mapped


# Every `networks.generator.Generator.__init__` kwarg (official HEAD); anything else is a typo or a
# different code version and is rejected. Runtime-only ones (losses, EQ, fp16, train mode) are accepted
# and ignored here: they configure training, not the network.
OFFICIAL_GENERATOR_KWARGS = frozenset(
    {
        "conditional",
        "label_type",
        "label_dim",
        "vfm_name",
        "scale_factor",
        "patch_from_layers",
        "patch_in_dimensions",
        "patch_out_dimensions",
        "compression_mode",
        "how_to_compress",
        "how_to_decompress",
        "decompress_factor",
        "attnproj_quant_layers",
        "attnproj_post_quant_layers",
        "resolution_compression_factor",
        "z_dimension",
        "vocab_width",
        "z_pooled_resolution",
        "z_dim_for_mapping_mlp_output",
        "vocab_size",
        "vocab_beta",
        "use_entropy_loss",
        "entropy_temp",
        "num_codebooks",
        "use_kl_loss",
        "use_vf_loss",
        "use_adaptive_vf_loss",
        "distmat_margin",
        "cos_margin",
        "distmat_weight",
        "cos_weight",
        "concat_z_block_indices",
        "concat_z_mapped_dims",
        "how_to_process_concat_z",
        "activation_for_concat_z",
        "use_multiscale_output",
        "attn_block_indices",
        "attn_depths",
        "use_self_attn",
        "use_cross_attn",
        "use_convnext",
        "use_gaussian_blur",
        "add_additional_convnext",
        "use_equivariance_regularization",
        "equivariance_regularization_p_prior",
        "equivariance_regularization_p_prior_scale",
        "img_resolution",
        "img_channels",
        "train_mode",
        "num_blocks",
        "num_fp16_res",
        "conv_clamp",
        "legacy",
        "synthesis_kwargs",
        "class_name",  # dnnlib's constructor key in the official YAML G_kwargs
    }
)


def config_from_official(
    generator_kwargs: Mapping,
    vfm_config: Mapping | None = None,
    vfm_name: str | None = None,
    vfm_family: str | None = None,
) -> VFMVAEConfig:
    """Translate official `Generator` kwargs (+ the VFM's config dict) into a `VFMVAEConfig`.

    `vfm_family` (official names: siglip2, siglip2_text, dinov2, eva, mae, qwen2_5_vl) wins over any
    name; `vfm_name` is our VFM preset (default: the family's full-size preset, `FAMILY_PRESET`).
    Rejects settings we do not implement (conditional, VQ, conv compression, non-skip, non-ConvNeXt).
    """
    from vfmvae.vfm.official import FAMILY_PRESET

    g = dict(generator_kwargs)
    syn = dict(g.get("synthesis_kwargs") or {})
    unknown = sorted(set(g) - OFFICIAL_GENERATOR_KWARGS)
    if unknown:
        raise ValueError(f"config_from_official: unknown official Generator kwargs {unknown}")

    def need(cond, msg):
        if not cond:
            raise ValueError(f"config_from_official: unsupported official setting: {msg}")

    need(g.get("compression_mode", "continuous") == "continuous", "compression_mode must be 'continuous'")
    need(
        g.get("how_to_compress") == "attnproj" and g.get("how_to_decompress") == "attnproj",
        "how_to_compress/how_to_decompress must be 'attnproj'",
    )
    need(g.get("z_pooled_resolution", 1) == 1, "z_pooled_resolution must be 1")
    need(
        g.get("use_convnext", True) and g.get("use_multiscale_output", True),
        "use_convnext and use_multiscale_output must be True",
    )
    need(syn.get("architecture", "skip") == "skip", "synthesis architecture must be 'skip'")
    need(g.get("how_to_process_concat_z", "unshuffle") == "unshuffle", "how_to_process_concat_z must be 'unshuffle'")
    need(g.get("use_self_attn", True), "use_self_attn=False")
    need(g.get("use_convnext", True), "use_convnext=False (StyleGAN2 layers)")
    unused_syn = sorted(set(syn) - {"channel_base", "channel_max", "num_res_blocks", "architecture"})
    need(not unused_syn, f"synthesis_kwargs {unused_syn}")
    in_dims = list(g["patch_in_dimensions"])
    need(len(set(in_dims)) == 1, f"patch_in_dimensions must all be equal, got {in_dims}")
    family = resolve_vfm_family(g, vfm_config, vfm_name, vfm_family)
    patch, width = _vfm_geometry(family, g, vfm_config, vfm_name)
    need(width is None or width == in_dims[0], f"VFM width {width} != patch_in_dimensions {in_dims[0]}")
    conditioning = conditioning_from_official(g, family, vfm_config)
    return VFMVAEConfig(
        **conditioning,
        vfm_name=vfm_name or FAMILY_PRESET[family],
        vfm_hidden_size=in_dims[0],
        vfm_patch_size=patch,
        vfm_scale=float(g.get("scale_factor", 2.0)),
        vfm_layers=tuple(g["patch_from_layers"]),
        level_dims=tuple(g["patch_out_dimensions"]),
        img_resolution=int(g.get("img_resolution", 256)),
        compression=int(g.get("resolution_compression_factor", 16)),
        z_dim=int(g.get("z_dimension", 32)),
        head_layers=int(g.get("attnproj_quant_layers", 1)),
        lift_layers=int(g.get("attnproj_post_quant_layers", 1)),
        lift_factor=int(g.get("decompress_factor", 16)),
        use_vf_projection=bool(g.get("use_vf_loss", False)),
        w_dim=int(g.get("z_dim_for_mapping_mlp_output", 128)),
        num_blocks=int(g.get("num_blocks", 6)),
        channel_base=int(syn.get("channel_base", 32768)),
        channel_max=int(syn.get("channel_max", 512)),
        num_res_blocks=int(syn.get("num_res_blocks", 3)),
        fusion_block_indices=tuple(g.get("concat_z_block_indices", ())),
        fusion_dims=tuple(g.get("concat_z_mapped_dims", ())),
        fusion_activation=g.get("activation_for_concat_z", "gelu"),
        attn_block_indices=tuple(g.get("attn_block_indices", ())),
        attn_depths=tuple(g.get("attn_depths", ())),
        extra_convnext=bool(g.get("add_additional_convnext", True)),
        use_blur=bool(g.get("use_gaussian_blur", True)),
        legacy=bool(g.get("legacy", False)),
        img_channels=int(g.get("img_channels", 3)),
    )


def load_official_state_dict(source) -> dict[str, torch.Tensor]:
    """State dict from a released file path, a loaded checkpoint object, or a plain state dict.

    Looks for `G_ema` first (the release and training snapshots store the EMA generator there),
    then `ema`, `model`, `state_dict`, `G`; a pickled module gives its `state_dict()`. A file is read without
    running code from it (`vfmvae.utils.safe_load`: the releases are plain `torch.save` dicts of state dicts);
    one that needs full unpickling (a pickled module) loads only when trusted (``--trust-pickle``).
    """
    from vfmvae.utils.safe_load import load_user_file

    obj = source
    if isinstance(source, (str, Path)):
        obj = load_user_file(source, what="official tokenizer file")
    for _ in range(3):
        if isinstance(obj, nn.Module):
            return obj.state_dict()
        if isinstance(obj, Mapping):
            for wrapper in ("G_ema", "ema", "model", "state_dict", "G"):
                if wrapper in obj and not isinstance(obj[wrapper], torch.Tensor):
                    obj = obj[wrapper]
                    break
            else:
                if all(isinstance(v, torch.Tensor) for v in obj.values()):
                    return dict(obj)
                raise ValueError(f"load_official_state_dict: no state dict found; top-level keys {list(obj)[:10]}")
    raise ValueError(f"load_official_state_dict: cannot read a state dict from {type(source).__name__}")
