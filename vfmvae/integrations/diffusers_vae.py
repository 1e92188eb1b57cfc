"""`AutoencoderKLVFMVAE`: the VFM-VAE tokenizer behind diffusers' `AutoencoderKL` surface.

The wrapper speaks diffusers' conventions and converts to ours at the boundary
(docs/design.md, "Value ranges and pixel conversion"; "Latent normalisation"):

    encode(x)  x (B, 3, H, W) in [-1, 1] --(x + 1) / 2--> VFMVAE.encode --> AutoencoderKLOutput(latent_dist)
               latent_dist: diffusers' `DiagonalGaussianDistribution` over the *unscaled* latent (B, C, H/16, W/16)
    decode(z)  unscaled z (B, C, h, w) --> DecoderOutput(sample=(B, 3, 16h, 16w) in [-1, 1], not clamped)

Latents stay unscaled inside the autoencoder, as in diffusers' own VAEs. The per-channel statistics of the
latent cache (`latents_stats.pt`, `vfmvae.codec.LatentNormalizer`) live only in the config, as `latents_mean`
/ `latents_std` with `scaling_factor` = the normaliser's multiplier, and a pipeline applies them with the
formula of diffusers' SDXL pipelines (what the diffusion network sees is `x`):

    x = (z - latents_mean) * scaling_factor / latents_std        z = x * latents_std / scaling_factor + latents_mean

which is `LatentNormalizer.normalize` / `denormalize`; `normalize_latents` / `denormalize_latents` implement it.
`shift_factor` stays None whenever per-channel statistics are set, so an SD3/Flux-style pipeline, whose
formula `z = x / scaling_factor + shift_factor` ignores them, fails loudly instead of decoding wrong latents.

Folder layout of `save_pretrained` (loading is local and offline; a hub id is refused):

    <dir>/config.json      diffusers config: _class_name, latent_channels, scaling_factor, shift_factor,
                           latents_mean, latents_std, sample_size, force_upcast, vfmvae_config
    <dir>/vfmvae/          the tokenizer's own export folder (`vfmvae.tokenizer.export`): its weights hash is
                           checked on load, and the frozen VFM is recorded by path and hash, not copied, unless
                           it was randomly initialised

`from_pretrained` also accepts a bare tokenizer export folder (then `latents_stats=` supplies the statistics).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

try:
    from diffusers import ConfigMixin, ModelMixin
    from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
    from diffusers.models.modeling_outputs import AutoencoderKLOutput
    from diffusers.utils.accelerate_utils import apply_forward_hook
except ImportError as e:  # an optional extra
    raise ImportError('vfmvae.integrations needs diffusers: pip install "vfmvae[diffusers]" (diffusers>=0.35)') from e

from vfmvae.codec import LatentNormalizer, signed_to_unit
from vfmvae.tokenizer.config import VFMVAEConfig, get_config
from vfmvae.tokenizer.export import CONFIG_NAME, EXPORT_FORMAT, SUPPORTED_FORMATS, load_tokenizer
from vfmvae.tokenizer.export import save_pretrained as save_tokenizer_export
from vfmvae.tokenizer.model import VFMVAE

logger = logging.getLogger(__name__)

__all__ = ["AutoencoderKLVFMVAE", "TOKENIZER_SUBFOLDER"]

TOKENIZER_SUBFOLDER = "vfmvae"
# Loader arguments that diffusers passes around and that mean nothing for a local, unsharded folder.
_IGNORED_LOADING_KWARGS = ("cache_dir", "local_files_only", "use_safetensors", "low_cpu_mem_usage", "revision")
_RANGE_TOLERANCE = 2e-3  # the tokenizer's own [0, 1] check allows 1e-3; (x + 1) / 2 halves an excess


def _tokenizer_config(value: VFMVAEConfig | Mapping[str, Any] | str) -> VFMVAEConfig:
    if isinstance(value, VFMVAEConfig):
        return value
    if isinstance(value, str):
        return get_config(value)
    return VFMVAEConfig.from_dict(dict(value))


def _stats_lists(latents_stats) -> tuple[list[float], list[float], float]:
    """`(mean, std, multiplier)` from a `latents_stats.pt` path, a `LatentNormalizer` or a `{"mean", "std"}` dict."""
    if isinstance(latents_stats, LatentNormalizer):
        normalizer = latents_stats
    elif isinstance(latents_stats, Mapping):
        normalizer = LatentNormalizer.from_stats(latents_stats)
    else:
        normalizer = LatentNormalizer.load(latents_stats)  # torch.load(weights_only=True) inside
    return normalizer.mean.flatten().tolist(), normalizer.std.flatten().tolist(), normalizer.multiplier


class AutoencoderKLVFMVAE(ModelMixin, ConfigMixin):
    """VFM-VAE (paper Sec. 3, Fig. 2) as a diffusers autoencoder; see the module docstring for the conventions.

    Build it with `from_tokenizer(VFMVAE, latents_stats=...)` or `from_pretrained(local folder)`; the plain
    constructor builds a randomly initialised tokenizer from `vfmvae_config` (a preset name or a
    `VFMVAEConfig` dict), which is what `from_config` does. `tokenizer=` wraps a built `VFMVAE` instead.

    Config: `latent_channels` (= `z_dim`), `sample_size` (native image side), `scaling_factor` (the
    normaliser's multiplier, 1.0 in the paper), `shift_factor` (None with per-channel statistics),
    `latents_mean` / `latents_std` (per-channel lists or None), `force_upcast` (True: decode in float32,
    docs/design.md, "Precision policy"), `vfmvae_config` (the tokenizer architecture).
    """

    config_name = CONFIG_NAME
    ignore_for_config = ["tokenizer"]
    _supports_gradient_checkpointing = False

    def __init__(
        self,
        vfmvae_config: Mapping[str, Any] | str | None = None,
        latent_channels: int | None = None,
        sample_size: int | None = None,
        scaling_factor: float = 1.0,
        shift_factor: float | None = None,
        latents_mean: list[float] | None = None,
        latents_std: list[float] | None = None,
        force_upcast: bool = True,
        *,
        tokenizer: VFMVAE | None = None,
    ):
        super().__init__()
        if tokenizer is None:
            if vfmvae_config is None:
                raise ValueError("AutoencoderKLVFMVAE needs tokenizer= (a VFMVAE) or vfmvae_config= (preset or dict)")
            cfg = _tokenizer_config(vfmvae_config)
            tokenizer = VFMVAE(cfg).eval()  # random weights, the VFM included: the `from_config` path
        elif not isinstance(tokenizer, VFMVAE):
            raise TypeError(f"AutoencoderKLVFMVAE wraps a vfmvae.tokenizer.VFMVAE, got {type(tokenizer).__name__}")
        elif vfmvae_config is not None and _tokenizer_config(vfmvae_config) != tokenizer.cfg:
            raise ValueError("AutoencoderKLVFMVAE: vfmvae_config differs from the architecture of tokenizer=")
        cfg = tokenizer.cfg
        if latent_channels is not None and latent_channels != cfg.z_dim:
            raise ValueError(f"latent_channels={latent_channels} but the tokenizer has z_dim={cfg.z_dim}")
        if (latents_mean is None) != (latents_std is None):
            raise ValueError("latents_mean and latents_std must be given together (both per-channel lists) or not")
        if latents_mean is not None:
            # Validates lengths and positivity (the same rules as every other consumer of the statistics).
            stats = LatentNormalizer(torch.tensor(latents_mean), torch.tensor(latents_std), scaling_factor)
            if stats.num_channels != cfg.z_dim:
                raise ValueError(f"latent statistics have {stats.num_channels} channels, the tokenizer {cfg.z_dim}")
            if shift_factor is not None:
                raise ValueError("shift_factor must be None when per-channel latents_mean/latents_std are set")
        if not scaling_factor > 0:
            raise ValueError(f"scaling_factor must be positive, got {scaling_factor}")
        self.tokenizer = tokenizer
        self.register_to_config(
            vfmvae_config=cfg.to_dict(),
            latent_channels=cfg.z_dim,
            sample_size=cfg.img_resolution if sample_size is None else int(sample_size),
            scaling_factor=float(scaling_factor),
            shift_factor=None if shift_factor is None else float(shift_factor),
            latents_mean=None if latents_mean is None else [float(v) for v in latents_mean],
            latents_std=None if latents_std is None else [float(v) for v in latents_std],
            force_upcast=bool(force_upcast),
        )
        self.use_slicing = False
        self.use_tiling = False

    @classmethod
    def from_tokenizer(
        cls, tokenizer: VFMVAE, latents_stats=None, scaling_factor: float | None = None, **config
    ) -> AutoencoderKLVFMVAE:
        """Wrap a built `VFMVAE`. `latents_stats`: a `latents_stats.pt` path, a `LatentNormalizer` or a
        `{"mean", "std"}` dict; `scaling_factor` defaults to the normaliser's multiplier (else 1.0)."""
        if latents_stats is not None:
            mean, std, multiplier = _stats_lists(latents_stats)
            config.update(latents_mean=mean, latents_std=std)
            scaling_factor = multiplier if scaling_factor is None else scaling_factor
        return cls(tokenizer=tokenizer, scaling_factor=1.0 if scaling_factor is None else scaling_factor, **config)

    # ------------------------------------------------------------------ facts
    @property
    def downsample_factor(self) -> int:
        """`f`: an `H x W` image has an `H/f x W/f` latent (16 in the paper)."""
        return self.tokenizer.cfg.compression

    @property
    def has_encoder(self) -> bool:
        return self.tokenizer.has_encoder

    @property
    def latent_normalizer(self) -> LatentNormalizer | None:
        """The config's statistics as a `LatentNormalizer` (multiplier = `scaling_factor`), or None."""
        if self.config.latents_mean is None:
            return None
        return LatentNormalizer(
            torch.tensor(self.config.latents_mean), torch.tensor(self.config.latents_std), self.config.scaling_factor
        )

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config.latent_channels
        if like.ndim != 4 or like.shape[1] != c:
            raise ValueError(f"latents must be (B, {c}, h, w), got {tuple(like.shape)}")
        if self.config.latents_mean is None:
            shift = 0.0 if self.config.shift_factor is None else self.config.shift_factor
            return torch.full((1, c, 1, 1), shift).to(like), torch.ones(1, c, 1, 1).to(like)
        mean = torch.tensor(self.config.latents_mean).view(1, c, 1, 1).to(like)
        return mean, torch.tensor(self.config.latents_std).view(1, c, 1, 1).to(like)

    def normalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Unscaled `z (B, C, h, w)` -> what the diffusion network sees, `(z - mean) * scaling_factor / std`."""
        mean, std = self._stats(z)
        return (z - mean) * self.config.scaling_factor / std

    def denormalize_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Network latents `x (B, C, h, w)` -> unscaled `z = x * std / scaling_factor + mean` for `decode`."""
        mean, std = self._stats(x)
        return x * std / self.config.scaling_factor + mean

    # ------------------------------------------------------------------ AutoencoderKL surface
    def _to_unit(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"AutoencoderKLVFMVAE.encode: images must be (B, 3, H, W), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"AutoencoderKLVFMVAE.encode: images must be float in [-1, 1], got {x.dtype}")
        if x.device.type == "cpu":  # on an accelerator the tokenizer asserts its [0, 1] range on the device
            lo, hi = (v.item() for v in torch.aminmax(x))
            if lo < -1 - _RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
                raise ValueError(
                    f"AutoencoderKLVFMVAE.encode: images must be in [-1, 1] (diffusers convention), got range "
                    f"[{lo:.3f}, {hi:.3f}]; map [0, 1] images with 2 * x - 1"
                )
        return signed_to_unit(x)

    def _moments(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_slicing and x.shape[0] > 1:
            return torch.cat([self.tokenizer.encode(self._to_unit(s)).moments for s in x.split(1)])
        return self.tokenizer.encode(self._to_unit(x)).moments

    @apply_forward_hook
    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """Images `(B, 3, H, W)` in [-1, 1] -> `AutoencoderKLOutput(latent_dist)` over the unscaled latent.

        `latent_dist` is diffusers' `DiagonalGaussianDistribution` built from the tokenizer's moments
        (mean, log-variance; float32), so `.sample(generator)`, `.mode()`, `.mean`, `.std`, `.kl()` are
        diffusers' own. The paper's latents are posterior *samples* (docs/design.md, "Latent normalisation").
        """
        posterior = DiagonalGaussianDistribution(self._moments(x))
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    @apply_forward_hook
    def decode(self, z: torch.Tensor, return_dict: bool = True, generator: torch.Generator | None = None):
        """Unscaled latents `(B, C, h, w)` -> `DecoderOutput(sample=(B, 3, 16h, 16w))` in [-1, 1], not clamped.

        `generator` is accepted for signature compatibility; the decoder is deterministic.
        """
        if self.use_slicing and z.shape[0] > 1:
            images = torch.cat([self.tokenizer.decode(s) for s in z.split(1)])
        else:
            images = self.tokenizer.decode(z)
        return DecoderOutput(sample=images) if return_dict else (images,)

    def forward(
        self,
        sample: torch.Tensor,
        sample_posterior: bool = False,
        return_dict: bool = True,
        generator: torch.Generator | None = None,
    ):
        """Reconstruct `sample` ([-1, 1]): encode, take the posterior mean (or a sample), decode."""
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        return self.decode(z, return_dict=return_dict)

    def enable_slicing(self) -> None:
        """Encode and decode one image at a time (less memory; the same result up to float rounding)."""
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False

    def disable_tiling(self) -> None:
        self.use_tiling = False

    def enable_tiling(self, *args, **kwargs) -> None:
        # The VFM attends over the whole image and the decoder's attention blocks over the whole latent, so
        # tiles would change the result; slicing (one image at a time) is exact and is offered instead.
        raise NotImplementedError(
            "AutoencoderKLVFMVAE does not tile: its VFM and decoder attention are global; use enable_slicing()"
        )

    # ------------------------------------------------------------------ folders
    def save_pretrained(
        self, save_directory: str | os.PathLike, is_main_process: bool = True, push_to_hub: bool = False, **kwargs
    ) -> None:
        """Write `<dir>/config.json` and the tokenizer export `<dir>/vfmvae/` (see the module docstring).

        The export keeps the label and provenance of the folder the tokenizer was loaded from, and records
        (not copies) a VFM that was loaded from a local path. Local only: `push_to_hub=True` is refused.
        """
        if push_to_hub:
            raise NotImplementedError(
                "AutoencoderKLVFMVAE.save_pretrained writes local folders only; upload it yourself"
            )
        unknown = sorted(k for k, v in kwargs.items() if k not in ("safe_serialization", "max_shard_size") and v)
        if unknown:
            raise TypeError(f"AutoencoderKLVFMVAE.save_pretrained: unsupported arguments {unknown}")
        if not is_main_process:
            return
        out = Path(save_directory)
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(f"save_pretrained: {out} exists and is not a directory")
        record = getattr(self.tokenizer, "export_record", None) or {}
        save_tokenizer_export(
            self.tokenizer,
            out / TOKENIZER_SUBFOLDER,
            weights=record.get("weights", "raw"),
            provenance=record.get("provenance"),
            metrics=record.get("metrics"),
        )
        self.save_config(out)  # last: a folder without config.json is visibly incomplete

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        subfolder: str | None = None,
        decoder_only: bool | None = None,
        vfm_pretrained: str | os.PathLike | None = None,
        verify_vfm: bool = True,
        latents_stats=None,
        scaling_factor: float | None = None,
        torch_dtype: torch.dtype | None = None,
        **kwargs,
    ) -> AutoencoderKLVFMVAE:
        """Load a local folder written by `save_pretrained`, or a bare tokenizer export folder; eval mode.

        `decoder_only=True` never builds the VFM (decoding only; None: as exported); `vfm_pretrained` overrides the recorded VFM
        path; `latents_stats` / `scaling_factor` override the config's statistics (`from_tokenizer` semantics).
        """
        unknown = sorted(k for k, v in kwargs.items() if k not in _IGNORED_LOADING_KWARGS and v not in (None, False))
        if unknown:
            raise TypeError(
                f"AutoencoderKLVFMVAE.from_pretrained: unsupported arguments {unknown} (local folders only)"
            )
        root = Path(pretrained_model_name_or_path).expanduser()
        root = root / subfolder if subfolder else root
        if not root.is_dir():
            raise FileNotFoundError(
                f"{root} is not a local folder: AutoencoderKLVFMVAE loads local export folders only (offline); "
                "download a hub repository first and pass its path"
            )
        config_file = root / CONFIG_NAME
        if not config_file.is_file():
            raise FileNotFoundError(f"{root} is not a VFM-VAE export: {CONFIG_NAME} is missing")
        record = json.loads(config_file.read_text())
        export = root / TOKENIZER_SUBFOLDER if record.get("_class_name") == cls.__name__ else root
        if decoder_only is None and (export / CONFIG_NAME).is_file():
            decoder_only = not json.loads((export / CONFIG_NAME).read_text()).get("has_encoder", True)
        load = dict(decoder_only=bool(decoder_only), vfm_pretrained=vfm_pretrained, verify_vfm=verify_vfm)
        if record.get("_class_name") == cls.__name__:
            tokenizer = load_tokenizer(export, **load)
            names = (
                "vfmvae_config",
                "latent_channels",
                "sample_size",
                "scaling_factor",
                "shift_factor",
                "force_upcast",
            )
            config = {k: record[k] for k in names + ("latents_mean", "latents_std") if k in record}
            recorded_scale = config.pop("scaling_factor", None)
            if latents_stats is not None:  # statistics given at load time replace the recorded ones together
                config.pop("latents_mean", None), config.pop("latents_std", None)
            elif scaling_factor is None:
                scaling_factor = recorded_scale
            model = cls.from_tokenizer(tokenizer, latents_stats, scaling_factor, **config)
        elif record.get("format") in SUPPORTED_FORMATS:  # a bare tokenizer export folder, any version
            model = cls.from_tokenizer(load_tokenizer(root, **load), latents_stats, scaling_factor)
        else:
            found = record.get("_class_name") or record.get("format") or "neither"
            raise ValueError(
                f"{root} is not a VFM-VAE export ({CONFIG_NAME} names {found!r}, expected _class_name "
                f"{cls.__name__!r} or format {EXPORT_FORMAT!r}); write one with AutoencoderKLVFMVAE.save_pretrained"
            )
        if torch_dtype is not None:
            model = model.to(torch_dtype)
        return model.eval()
