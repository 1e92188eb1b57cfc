"""What the rest of the code needs from a tokenizer: the `Tokenizer` protocol (VFM-VAE, VA-VAE, SD-VAE).

The latent cache, the diffusion families, sampling, the sample-grid callback and SE-CKNNA talk to a tokenizer
only through these members, so the paper's comparison (paper Table 1: VFM-VAE vs VA-VAE vs SD-VAE under the
same diffusion training) swaps the tokenizer and nothing else.

Conventions (docs/design.md, "Value ranges and pixel conversion"; "Latent normalisation"):

- ``encode(images)``: float images ``(B, 3, H, W)`` in **[0, 1]** (``uint8`` is accepted and divided by 255);
  ``H`` and ``W`` multiples of ``downsample_factor``. Returns a `Posterior` over the **unscaled** latent
  ``(B, latent_channels, H / f, W / f)``. Every tokenizer maps [0, 1] to the range its network was trained on
  (VA-VAE and SD-VAE: [-1, 1]) itself.
- ``decode(z)``: unscaled latents ``(B, latent_channels, h, w)`` -> images ``(B, 3, f h, f w)``, nominally in
  [-1, 1] and **not clamped**; pixels are made by `vfmvae.codec.to_uint8`.
- No latent scaling happens inside a tokenizer: diffusion sees ``(z - mean_c) / std_c`` with per-channel
  statistics of the latent cache (`vfmvae.codec.LatentNormalizer`), for every tokenizer alike. SD-VAE's
  global ``scaling_factor`` is available as an option on that model, never applied by default.
- ``weights_sha256()``: `vfmvae.provenance.state_dict_sha256` of the tokenizer's own weights, without frozen
  parts that are recorded by name (the VFM of VFM-VAE: keys under ``vfm.``). It is the hash
  `vfmvae.tokenizer.export` writes as ``weights_sha256``; it flows into the cache manifest, the diffusion
  checkpoint and the sample ``.npz`` (docs/design.md, "Checkpoints, resume and provenance").

`TokenizerRecordMixin` implements the bookkeeping members (`latent_shape`, `weights_sha256`, `provenance`)
from three attributes, so that a tokenizer class only declares ``kind``, ``latent_channels`` and
``downsample_factor``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

__all__ = [
    "Posterior",
    "Tokenizer",
    "TokenizerRecordMixin",
    "TOKENIZER_MEMBERS",
    "check_tokenizer",
    "tokenizer_weights_sha256",
]


@runtime_checkable
class Posterior(Protocol):
    """Diagonal Gaussian over the latent; every tensor is ``(B, C, h, w)`` float32.

    ``logvar`` is clamped to [-30, 20] (LDM's convention, kept by all three tokenizers); ``moments`` is
    ``cat(mean, logvar)`` *before* the clamp (what the networks output).
    """

    mean: torch.Tensor
    logvar: torch.Tensor
    std: torch.Tensor
    moments: torch.Tensor

    def sample(self, eps: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """``mean + std * eps``; eps ~ N(0, I) from ``generator`` on the latent's device unless given."""
        ...

    def mode(self) -> torch.Tensor:
        """The mean."""
        ...

    def kl(self) -> torch.Tensor:
        """KL to N(0, I) per sample, ``(B,)``."""
        ...


@runtime_checkable
class Tokenizer(Protocol):
    """An image tokenizer as the diffusion side sees it (see the module docstring for the conventions).

    Attributes:
        kind: short family name written into records: ``"vfmvae"``, ``"vavae"``, ``"sdvae"``.
        latent_channels: ``C`` of the latent.
        downsample_factor: ``f``: an ``H x W`` image has an ``H/f x W/f`` latent.
    """

    kind: str
    latent_channels: int
    downsample_factor: int

    def encode(self, images: torch.Tensor) -> Posterior:
        """``(B, 3, H, W)`` in [0, 1] -> posterior over ``(B, C, H/f, W/f)`` (unscaled)."""
        ...

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` unscaled latents -> ``(B, 3, f h, f w)`` images in [-1, 1] (not clamped)."""
        ...

    def latent_shape(self, height: int, width: int | None = None) -> tuple[int, int, int]:
        """``(C, height / f, width / f)`` for an image size (``width`` defaults to ``height``)."""
        ...

    def weights_sha256(self) -> str:
        """Content hash of the weights (see the module docstring)."""
        ...

    def provenance(self) -> dict[str, Any]:
        """JSON-able record for manifests: ``kind``, ``weights_sha256``, ``config``, ``latent_channels``,
        ``downsample_factor``, ``source`` (the file or folder it was loaded from, or None)."""
        ...


# Members a tokenizer must have, in the order the error message lists them.
TOKENIZER_MEMBERS = (
    "kind",
    "latent_channels",
    "downsample_factor",
    "encode",
    "decode",
    "latent_shape",
    "weights_sha256",
    "provenance",
)


def check_tokenizer(obj: Any) -> Any:
    """Return ``obj`` if it has every `Tokenizer` member, else raise a one-line ``TypeError`` naming the
    missing ones (``isinstance(obj, Tokenizer)`` says only yes or no)."""
    missing = [name for name in TOKENIZER_MEMBERS if not hasattr(obj, name)]
    if missing:
        raise TypeError(
            f"{type(obj).__name__} is not a tokenizer: it lacks {', '.join(missing)} "
            "(see vfmvae.tokenizer.interface.Tokenizer; TokenizerRecordMixin supplies the bookkeeping members)"
        )
    return obj


def tokenizer_weights_sha256(module: torch.nn.Module, frozen_prefixes: tuple[str, ...] = ()) -> str:
    """`vfmvae.provenance.state_dict_sha256` of ``module``'s state dict without the keys under ``frozen_prefixes``;
    for a `VFMVAE` with ``("vfm.",)`` this is the ``weights_sha256`` of its export folder."""
    from vfmvae.provenance import state_dict_sha256

    frozen = tuple(frozen_prefixes)
    state = module.state_dict()
    return state_dict_sha256({k: v for k, v in state.items() if not (frozen and k.startswith(frozen))})


class TokenizerRecordMixin:
    """Implements `latent_shape`, `weights_sha256` and `provenance` for an ``nn.Module`` tokenizer.

    The class provides ``kind``, ``latent_channels``, ``downsample_factor`` and a ``config_record()`` (JSON-able
    architecture record); ``frozen_prefixes`` names state-dict prefixes that are recorded by name, not hashed
    (VFM-VAE: ``("vfm.",)``). Loaders set ``source`` to the file or folder they read.
    """

    frozen_prefixes: tuple[str, ...] = ()
    source: str | None = None

    def latent_shape(self, height: int, width: int | None = None) -> tuple[int, int, int]:
        width = height if width is None else width
        f = self.downsample_factor
        if height % f or width % f:
            raise ValueError(
                f"{type(self).__name__}: image size {height}x{width} is not a multiple of the downsampling "
                f"factor {f}; crop or resize to a multiple of {f}"
            )
        return (self.latent_channels, height // f, width // f)

    def weights_sha256(self) -> str:
        return tokenizer_weights_sha256(self, self.frozen_prefixes)  # type: ignore[arg-type]  (on an nn.Module)

    def config_record(self) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} must define config_record()")

    def provenance(self) -> dict[str, Any]:
        from vfmvae.provenance import to_jsonable

        return {
            "kind": self.kind,
            "weights_sha256": self.weights_sha256(),
            "config": to_jsonable(self.config_record()),
            "latent_channels": int(self.latent_channels),
            "downsample_factor": int(self.downsample_factor),
            "source": self.source,
        }
