"""Bridges to other libraries' conventions. Optional dependencies are imported only when a name is used.

* `AutoencoderKLVFMVAE` (`diffusers_vae.py`): the VFM-VAE tokenizer with diffusers' `AutoencoderKL` surface.
* `LightningDiTTransformer2DModel` (`diffusers_transformer.py`): a LightningDiT as a diffusers model.
* `VFMVAELatentDiffusionPipeline`, `lightningdit_scheduler`, `flow_sigmas` (`diffusers_pipeline.py`): a
  class-conditional diffusers pipeline around that autoencoder and a LightningDiT velocity network.

Both need the ``diffusers`` extra (``pip install "vfmvae[diffusers]"``); see docs/diffusers.md.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "AutoencoderKLVFMVAE": "vfmvae.integrations.diffusers_vae",
    "LightningDiTTransformer2DModel": "vfmvae.integrations.diffusers_transformer",
    "VFMVAELatentDiffusionPipeline": "vfmvae.integrations.diffusers_pipeline",
    "lightningdit_scheduler": "vfmvae.integrations.diffusers_pipeline",
    "flow_sigmas": "vfmvae.integrations.diffusers_pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
