"""`VFMVAE`: frozen VFM + latent head + decoder (paper Fig. 2; docs/design.md, "Tokenizer
architecture").

    images_01 (B, 3, H, W) --x2 bilinear, frozen VFM, layers [0, 12, -1]--> 3 x (B, (2H/16)*(2W/16), D)
               --LatentHead--> DiagonalGaussian over (B, z_dim, H/16, W/16) --sample--> z
               --Decoder--> image (B, 3, H, W) in [-1, 1] + multi-scale images {H/2: ..., ..., H/32: ...}

Any H, W that are multiples of 64 work (latent side divisible by 4, fixed by the fusion adapters):
192 px -> 12x12 latent -> 192 px. The VFM is always frozen: it runs under `no_grad`, stays in
`eval()` when the model trains, and its parameters have `requires_grad=False`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from vfmvae.codec import uint8_to_unit

from .config import VFMVAEConfig, get_config
from .decoder import Decoder, DecoderOutput
from .hub import TokenizerHubMixin
from .interface import TokenizerRecordMixin
from .latent_head import LatentHead
from .posterior import DiagonalGaussian


@dataclass
class VFMVAEOutput:
    """Result of `VFMVAE.forward`.

    posterior: over the latent, (B, z_dim, h, w); z: the latent that was decoded (sampled unless
    `sample=False`); image: (B, 3, H, W) in [-1, 1]; multiscale: {side: (B, 3, side, side)}, largest
    first; vfm_features: the VFM token tensors (B, N, D) of `cfg.vfm_layers` (detached; the VF loss
    uses the last one).
    """

    posterior: DiagonalGaussian
    z: torch.Tensor
    image: torch.Tensor
    multiscale: dict[int, torch.Tensor] = field(default_factory=dict)
    vfm_features: list[torch.Tensor] = field(default_factory=list)


def _build_text_encoder(cfg: VFMVAEConfig, pretrained=None) -> nn.Module:
    from vfmvae.vfm.siglip2_text import build_text_tower

    return build_text_tower(cfg.text_encoder, pretrained=pretrained)


def _build_vfm(cfg: VFMVAEConfig, pretrained=None, config: dict | None = None) -> nn.Module:
    try:
        from vfmvae.vfm import build_vfm
    except ImportError as e:  # the VFM wrappers are a separate module
        raise ImportError(
            "VFMVAE needs vfmvae.vfm.build_vfm to build its VFM; pass vfm=... or decoder_only=True"
        ) from e
    return build_vfm(cfg.vfm_name, pretrained=pretrained, config=config)


class VFMVAE(TokenizerRecordMixin, nn.Module, TokenizerHubMixin):
    """The tokenizer. `VFMVAE(cfg, vfm=None, decoder_only=False, vfm_pretrained=None, vfm_config=None)`.

    It implements `vfmvae.tokenizer.interface.Tokenizer` (``kind = "vfmvae"``; the frozen VFM is recorded by
    name, not hashed: ``frozen_prefixes = ("vfm.",)``).

    - `vfm`: a built frozen VFM (`vfmvae.vfm.FrozenVFM`); if None it is built from `cfg.vfm_name`
      (random weights unless `vfm_pretrained` is a local folder/file).
    - `decoder_only=True`: no VFM and no head are built (diffusion decoding); `encode` then raises.
    - Conditional decoders (`cfg.label_type`, docs/conditional.md): "text" / "cls2text" also hold the frozen
      SigLIP2 text tower `text_encoder` (given, or built from `cfg.text_encoder`, loaded from
      `text_pretrained`; not built with `decoder_only`, whose `decode` then takes a precomputed condition).
    - `save_pretrained(folder)` / `VFMVAE.from_pretrained(folder or Hub id)` / `push_to_hub(repo_id)`: the
      ``huggingface_hub.ModelHubMixin`` methods over the export folder (`vfmvae.tokenizer.hub`, docs/export.md).
    """

    def __init__(
        self,
        cfg: VFMVAEConfig | str = "vfmvae-f16d32-siglip2",
        vfm: nn.Module | None = None,
        decoder_only: bool = False,
        vfm_pretrained=None,
        vfm_config: dict | None = None,
        text_encoder: nn.Module | None = None,
        text_pretrained=None,
    ):
        super().__init__()
        cfg = get_config(cfg) if isinstance(cfg, str) else cfg
        self.cfg = cfg
        self.decoder = Decoder(cfg)
        self.head: LatentHead | None = None
        self.vfm: nn.Module | None = None
        if not decoder_only:
            self.head = LatentHead(cfg)
            self.vfm = vfm if vfm is not None else _build_vfm(cfg, vfm_pretrained, vfm_config)
            self.vfm.requires_grad_(False)
            self.vfm.eval()
        self.text_encoder: nn.Module | None = None
        self.text_pretrained = None if text_pretrained is None else str(text_pretrained)  # recorded by exports
        if cfg.uses_text and (text_encoder is not None or not decoder_only):
            self.text_encoder = text_encoder if text_encoder is not None else _build_text_encoder(cfg, text_pretrained)
            if getattr(self.text_encoder, "hidden_size", cfg.text_dim) != cfg.text_dim:
                raise ValueError(
                    f"the text tower is {self.text_encoder.hidden_size} wide but the tokenizer's text_dim is "
                    f"{cfg.text_dim}; set tokenizer text_dim to the tower's hidden size"
                )
            self.text_encoder.requires_grad_(False)
            self.text_encoder.eval()

    kind = "vfmvae"
    frozen_prefixes = ("vfm.",)

    @property
    def latent_channels(self) -> int:
        return self.cfg.z_dim

    @property
    def downsample_factor(self) -> int:
        return self.cfg.compression

    def config_record(self) -> dict:
        return self.cfg.to_dict()

    @classmethod
    def decoder_only(cls, cfg: VFMVAEConfig | str = "vfmvae-f16d32-siglip2") -> VFMVAE:
        return cls(cfg, decoder_only=True)

    @property
    def has_encoder(self) -> bool:
        return self.vfm is not None and self.head is not None

    def requires_grad_(self, requires_grad: bool = True) -> VFMVAE:
        super().requires_grad_(requires_grad)
        for frozen in (self.vfm, self.text_encoder):
            if frozen is not None:
                frozen.requires_grad_(False)  # `model.requires_grad_(True)` must not unfreeze a frozen tower
        return self

    def train(self, mode: bool = True) -> VFMVAE:
        super().train(mode)
        for frozen in (self.vfm, self.text_encoder):
            if frozen is not None:
                frozen.eval()  # frozen towers never train (dropout off, fixed statistics)
        return self

    # ------------------------------------------------------------------ encoder
    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"VFMVAE.encode: images must be (B, 3, H, W), got {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            images = uint8_to_unit(images)  # loaders yield uint8; the model takes [0, 1]
        elif not images.is_floating_point():
            raise TypeError(f"VFMVAE.encode: images must be float in [0, 1] or uint8, got {images.dtype}")
        if images.device.type == "meta":
            lo, hi = 0.0, 1.0
        elif images.device.type != "cpu":
            # On an accelerator a host-side check would sync every G/D phase and caching batch: assert on the
            # device instead (asynchronous; a violation surfaces as a device-side assertion).
            lo_t, hi_t = torch.aminmax(images)
            torch._assert_async((lo_t >= -1e-3) & (hi_t <= 1 + 1e-3), "VFMVAE.encode: images must be in [0, 1]")
            lo, hi = 0.0, 1.0
        else:
            lo, hi = (t.item() for t in torch.aminmax(images))
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(
                f"VFMVAE.encode: images must be in [0, 1] (got range [{lo:.3f}, {hi:.3f}]); "
                f"map [-1, 1] images with (x + 1) / 2"
            )
        H, W = images.shape[-2:]
        step = self.cfg.compression * self.decoder.min_latent_multiple
        if H % step or W % step:
            raise ValueError(
                f"VFMVAE.encode: image size {H}x{W} must be a multiple of {step} "
                f"(latent = size/{self.cfg.compression}, divisible by {self.decoder.min_latent_multiple})"
            )
        return images

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """VFM token grid for an input image of this size (after the x`vfm_scale` resize)."""
        p = self.cfg.vfm_patch_size
        return int(height * self.cfg.vfm_scale) // p, int(width * self.cfg.vfm_scale) // p

    def vfm_features(self, images_01: torch.Tensor) -> list[torch.Tensor]:
        """Frozen VFM tokens of `cfg.vfm_layers`: list of float32 `(B, N, D)`; never carries gradients."""
        if not self.has_encoder:
            raise RuntimeError("this VFMVAE was built decoder-only: it has no VFM / latent head to encode with")
        images_01 = self._check_images(images_01)
        with torch.no_grad():
            feats = self.vfm(images_01, list(self.cfg.vfm_layers), scale=self.cfg.vfm_scale)
        return [f.float().detach() for f in feats]

    def encode(self, images_01: torch.Tensor, return_features: bool = False):
        """`(B, 3, H, W)` in [0, 1] -> `DiagonalGaussian` over `(B, z_dim, H/16, W/16)`
        (and the VFM features when `return_features`)."""
        feats = self.vfm_features(images_01)
        posterior = self.head(feats, self.token_grid(*images_01.shape[-2:]))
        return (posterior, feats) if return_features else posterior

    # ------------------------------------------------------------------ conditions
    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """Text condition of a "text" / "cls2text" decoder: `TextCondition(tokens (B, L, C), pooled (B, C),
        mask (B, L) bool)` from token ids `(B, L)` and their attention mask (pads 0), e.g. from
        `vfmvae.vfm.siglip2_text.tokenize(tokenizer, prompts)`. Frozen tower: never carries gradients."""
        if self.text_encoder is None:
            why = "it is unconditional or cls2id" if not self.cfg.uses_text else "it was built decoder-only"
            raise RuntimeError(f"this VFMVAE has no text tower ({why})")
        return self.text_encoder(input_ids, attention_mask)

    # ------------------------------------------------------------------ decoder
    def decode(self, z: torch.Tensor, text=None, class_labels=None, return_multiscale: bool = False):
        """`(B, z_dim, h, w) -> image (B, 3, 16h, 16w)` in [-1, 1]; with `return_multiscale`, a
        `DecoderOutput` (image, multiscale {side: image}, ws, z_lifted). Conditional decoders take
        `text=self.encode_text(...)` ("text", "cls2text") or `class_labels` int64 (B,) ("cls2id")."""
        if isinstance(text, bool):
            raise TypeError("decode(z, text, class_labels, return_multiscale): pass return_multiscale by keyword")
        out: DecoderOutput = self.decoder(z, text=text, class_labels=class_labels)
        return out if return_multiscale else out.image

    def forward(
        self,
        images_01: torch.Tensor,
        eps: torch.Tensor | None = None,
        text=None,
        class_labels=None,
        sample: bool = True,
    ) -> VFMVAEOutput:
        """Encode, sample z (with `eps` if given; the mean if `sample=False`), decode (with the condition)."""
        if isinstance(text, bool):
            raise TypeError("forward(images, eps, text, class_labels, sample): pass sample by keyword")
        posterior, feats = self.encode(images_01, return_features=True)
        z = posterior.sample(eps) if sample else posterior.mode()
        dec = self.decoder(z, text=text, class_labels=class_labels)
        return VFMVAEOutput(posterior=posterior, z=z, image=dec.image, multiscale=dec.multiscale, vfm_features=feats)

    # ------------------------------------------------------------------ bookkeeping
    def trainable_modules(self, mode: str = "train_all") -> dict[str, nn.Module]:
        """Sub-modules an optimiser / EMA should cover per training stage (never the VFM).

        - "train_all" (stages 0-1): head (+ VF projection) and decoder.
        - "train_decoder" (stage 2): decoder (lift, mapping, synthesis); the latent space is fixed.
        - "train_second_half_decoder" (stage 3): synthesis blocks at 64/128/256 px, i.e. blocks
          num_blocks-3.. (the intent of the official mode, whose name matching selects nothing; docs/design.md, "Tokenizer stages and losses").
        """
        if mode == "train_all":
            if not self.has_encoder:
                raise RuntimeError("train_all needs the encoder head; this model is decoder-only")
            return {"head": self.head, "decoder": self.decoder}
        if mode == "train_decoder":
            return {"decoder": self.decoder}
        if mode == "train_second_half_decoder":
            blocks = self.decoder.synthesis.blocks
            return {f"decoder.synthesis.blocks.{i}": blocks[i] for i in range(len(blocks) - 3, len(blocks))}
        raise ValueError(f"unknown train mode {mode!r}; use train_all, train_decoder or train_second_half_decoder")

    def reset_buffers(self) -> None:
        """Recompute non-persistent buffers (blur kernels) after `to_empty()` of a `meta` build.
        Persistent ones (legacy `noise_const`, `w_avg`) come from the checkpoint."""
        for m in self.decoder.modules():
            if hasattr(m, "reset_buffers") and m is not self.decoder:
                m.reset_buffers()

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part (docs/design.md, "Tokenizer architecture")."""

        def n(m):
            return 0 if m is None else sum(p.numel() for p in m.parameters())

        vf = n(self.head.vf_projection) if self.head is not None else 0
        return {
            "vfm": n(self.vfm),
            "text_encoder": n(self.text_encoder),
            "head": n(self.head) - vf,
            "vf_projection": vf,
            "lift": n(self.decoder.lift),
            "mapping": n(self.decoder.mapping),
            "synthesis": n(self.decoder.synthesis),
            "decoder": n(self.decoder),
        }
