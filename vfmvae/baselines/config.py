"""Architecture config of the KL autoencoder shared by the baseline tokenizers, with named presets.

VA-VAE (LightningDiT's `tokenizer/autoencoder.py`, the LDM/VQGAN-KL `AutoencoderKL`) and SD-VAE (diffusers'
`AutoencoderKL`) are the same network: a convolutional encoder of residual blocks with stride-2 downsampling,
a middle block with one single-head self-attention, a 1x1 ``quant_conv`` to the posterior moments, and a
mirrored decoder with nearest x2 upsampling. They differ in what is configurable (LDM: ``ch * ch_mult``, fixed
32 GroupNorm groups, attention inside the levels at static resolutions; diffusers: ``block_out_channels``,
``norm_num_groups``, attention only in the middle block) and in their key names. `KLAutoencoderConfig`
describes both with one set of fields; `from_ldm_ddconfig` and `from_diffusers_config` read the official
configs. Levels are indexed from the full resolution (level 0) down, in the encoder and the decoder alike.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "KLAutoencoderConfig",
    "BASELINE_PRESETS",
    "get_baseline_config",
    "from_ldm_ddconfig",
    "from_diffusers_config",
]


@dataclass(frozen=True)
class KLAutoencoderConfig:
    """One KL autoencoder (shapes: an ``H x W`` image <-> a ``latent_channels x H/f x W/f`` latent,
    ``f = 2 ** (len(channels) - 1)``).

    Fields:
        kind: family name recorded in provenance ("vavae", "sdvae").
        channels: width of each level, level 0 = full resolution (LDM ``ch * ch_mult``; diffusers
            ``block_out_channels``).
        stem_channels: width of the encoder's ``conv_in`` (LDM ``ch``; diffusers ``block_out_channels[0]``).
        num_res_blocks: residual blocks per encoder level; decoder levels have one more.
        latent_channels: channels of the latent z (LDM ``embed_dim``; diffusers ``latent_channels``).
        z_channels: encoder-output / decoder-input width around the 1x1 quant convs (LDM ``z_channels``;
            diffusers: ``latent_channels``). The encoder outputs ``2 * z_channels`` (mean and logvar).
        encoder_attn_levels, decoder_attn_levels: levels with a self-attention after every residual block.
        mid_attention: self-attention between the two residual blocks of the middle blocks.
        norm_groups, norm_eps: GroupNorm everywhere.
        dropout: inside the residual blocks (0 in every released model; inactive in eval()).
        use_quant_conv, use_post_quant_conv: the 1x1 convs before the posterior / before the decoder.
        scaling_factor, shift_factor: diffusers' global latent scaling ``(z - shift) * scale``; recorded,
            never applied by encode/decode (see `KLAutoencoder.scale_latents`).
    """

    kind: str
    channels: tuple[int, ...]
    stem_channels: int
    num_res_blocks: int
    latent_channels: int
    z_channels: int
    in_channels: int = 3
    out_channels: int = 3
    encoder_attn_levels: tuple[int, ...] = ()
    decoder_attn_levels: tuple[int, ...] = ()
    mid_attention: bool = True
    norm_groups: int = 32
    norm_eps: float = 1e-6
    dropout: float = 0.0
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    scaling_factor: float | None = None
    shift_factor: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "encoder_attn_levels", tuple(int(i) for i in self.encoder_attn_levels))
        object.__setattr__(self, "decoder_attn_levels", tuple(int(i) for i in self.decoder_attn_levels))
        problems = []
        if not self.channels:
            problems.append("channels is empty")
        widths = (*self.channels, self.stem_channels)
        if any(c % self.norm_groups for c in widths):
            problems.append(f"every width {widths} must be a multiple of norm_groups={self.norm_groups}")
        for name in ("encoder_attn_levels", "decoder_attn_levels"):
            bad = [i for i in getattr(self, name) if not 0 <= i < len(self.channels)]
            if bad:
                problems.append(f"{name} {bad} outside levels 0..{len(self.channels) - 1}")
        if not self.use_quant_conv and self.z_channels != self.latent_channels:
            problems.append("without quant_conv, z_channels must equal latent_channels")
        if not self.use_post_quant_conv and self.z_channels != self.latent_channels:
            problems.append("without post_quant_conv, z_channels must equal latent_channels")
        if problems:
            raise ValueError(f"KLAutoencoderConfig({self.kind}): " + "; ".join(problems))

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> KLAutoencoderConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise KeyError(f"KLAutoencoderConfig: unknown fields {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


# LDM options that change the network but no released VA-VAE / LDM autoencoder uses.
_LDM_UNSUPPORTED = {"give_pre_end": False, "tanh_out": False, "resamp_with_conv": True, "use_linear_attn": False}


def from_ldm_ddconfig(
    ddconfig: Mapping[str, Any], embed_dim: int | None = None, kind: str = "vavae"
) -> KLAutoencoderConfig:
    """LDM ``ddconfig`` (+ ``embed_dim``, default ``z_channels``) -> config.

    Attention placement follows the official constructors exactly: the encoder starts at the static
    ``resolution`` and halves it (floor) after each level; the decoder starts at ``resolution // 2**(n-1)`` and
    doubles it. A level has attention when that number is in ``attn_resolutions``; the input size plays no role.
    """
    dd = dict(ddconfig)
    for key, default in _LDM_UNSUPPORTED.items():
        if key in dd and dd[key] != default:
            raise ValueError(f"ddconfig {key}={dd[key]!r} is not supported (only {default!r}, as in every release)")
    if dd.get("attn_type", "vanilla") != "vanilla":
        raise ValueError(f"ddconfig attn_type={dd['attn_type']!r} is not supported (only 'vanilla')")
    if not dd.get("double_z", True):
        raise ValueError("ddconfig double_z=False is not supported: a KL autoencoder predicts mean and logvar")
    # The defaults of LDM's Encoder/Decoder constructors, which the official VA-VAE relies on.
    ch, ch_mult = int(dd.get("ch", 128)), tuple(dd.get("ch_mult", (1, 1, 2, 2, 4)))
    resolution, attn = int(dd.get("resolution", 256)), {int(r) for r in dd.get("attn_resolutions", (16,))}
    z_channels = int(dd.get("z_channels", 16))
    n = len(ch_mult)
    enc_res = [resolution]
    for _ in range(n - 1):
        enc_res.append(enc_res[-1] // 2)
    dec_res = [0] * n
    res = resolution // 2 ** (n - 1)
    for level in reversed(range(n)):
        dec_res[level] = res
        res *= 2
    return KLAutoencoderConfig(
        kind=kind,
        channels=tuple(ch * m for m in ch_mult),
        stem_channels=ch,
        num_res_blocks=int(dd.get("num_res_blocks", 2)),
        latent_channels=int(embed_dim if embed_dim is not None else z_channels),
        z_channels=z_channels,
        in_channels=int(dd.get("in_channels", 3)),
        out_channels=int(dd.get("out_ch", 3)),
        encoder_attn_levels=tuple(i for i in range(n) if enc_res[i] in attn),
        decoder_attn_levels=tuple(i for i in range(n) if dec_res[i] in attn),
        norm_groups=32,  # hard-coded in LDM's Normalize
        dropout=float(dd.get("dropout", 0.0)),
    )


def read_json_config(source: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """A config mapping, a ``config.json`` file, or a folder holding one."""
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"diffusers config not found: {path} (a folder with config.json, or the file itself)")
    return json.loads(path.read_text())


def from_diffusers_config(config: Mapping[str, Any] | str | os.PathLike, kind: str = "sdvae") -> KLAutoencoderConfig:
    """diffusers ``AutoencoderKL`` config (dict, ``config.json`` or its folder) -> config."""
    cfg = read_json_config(config)
    name = cfg.get("_class_name", "AutoencoderKL")
    if name != "AutoencoderKL":
        raise ValueError(f"diffusers config is for {name!r}; only AutoencoderKL is supported")
    boc = tuple(cfg.get("block_out_channels", (64,)))
    down = tuple(cfg.get("down_block_types", ("DownEncoderBlock2D",) * len(boc)))
    up = tuple(cfg.get("up_block_types", ("UpDecoderBlock2D",) * len(boc)))
    if set(down) != {"DownEncoderBlock2D"} or set(up) != {"UpDecoderBlock2D"} or not len(down) == len(boc) == len(up):
        raise ValueError(
            f"diffusers AutoencoderKL with blocks {down} / {up} is not supported: one DownEncoderBlock2D and "
            f"one UpDecoderBlock2D per entry of block_out_channels {boc}"
        )
    if cfg.get("act_fn", "silu") not in ("silu", "swish"):
        raise ValueError(f"diffusers act_fn={cfg['act_fn']!r} is not supported (only silu)")
    latent = int(cfg.get("latent_channels", 4))
    return KLAutoencoderConfig(
        kind=kind,
        channels=boc,
        stem_channels=boc[0],
        num_res_blocks=int(cfg.get("layers_per_block", 1)),
        latent_channels=latent,
        z_channels=latent,
        in_channels=int(cfg.get("in_channels", 3)),
        out_channels=int(cfg.get("out_channels", 3)),
        mid_attention=bool(cfg.get("mid_block_add_attention", True)),
        norm_groups=int(cfg.get("norm_num_groups", 32)),
        use_quant_conv=bool(cfg.get("use_quant_conv", True)),
        use_post_quant_conv=bool(cfg.get("use_post_quant_conv", True)),
        scaling_factor=float(cfg.get("scaling_factor", 0.18215)),
        shift_factor=None if cfg.get("shift_factor") is None else float(cfg["shift_factor"]),
    )


# LightningDiT `tokenizer/configs/vavae_f16d32.yaml` (model.params: embed_dim 32, ddconfig below).
VAVAE_F16D32_DDCONFIG = {
    "double_z": True,
    "z_channels": 32,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 128,
    "ch_mult": [1, 1, 2, 2, 4],
    "num_res_blocks": 2,
    "attn_resolutions": [16],
    "dropout": 0.0,
}

# config.json of stabilityai/sd-vae-ft-ema (diffusers format; scaling_factor is the diffusers default).
SD_VAE_FT_EMA_CONFIG = {
    "_class_name": "AutoencoderKL",
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 256,
    "scaling_factor": 0.18215,
}

# A tiny VA-VAE layout for tests and the CPU demo (random weights): f16 like the release, 8 latent channels, so a
# 64 px image has the same 8x4x4 latent as the `debug` VFM-VAE.
DEBUG_VAVAE_DDCONFIG = {"ch": 32, "ch_mult": [1, 1, 1, 1, 1], "num_res_blocks": 1, "z_channels": 8,
                        "resolution": 64, "attn_resolutions": []}  # fmt: skip

BASELINE_PRESETS: dict[str, KLAutoencoderConfig] = {
    "vavae-f16d32": from_ldm_ddconfig(VAVAE_F16D32_DDCONFIG, embed_dim=32, kind="vavae"),
    "sd-vae-ft-ema": from_diffusers_config(SD_VAE_FT_EMA_CONFIG, kind="sdvae"),
    "debug-vavae": from_ldm_ddconfig(DEBUG_VAVAE_DDCONFIG, kind="vavae"),
}


def get_baseline_config(name: str) -> KLAutoencoderConfig:
    if name not in BASELINE_PRESETS:
        raise KeyError(f"unknown baseline tokenizer preset {name!r}; known: {sorted(BASELINE_PRESETS)}")
    return BASELINE_PRESETS[name]
