"""VFM-VAE tokenizer network (arXiv 2510.18457): frozen VFM + latent head + decoder, in plain PyTorch.

Public entry points:
    VFMVAEConfig, PRESETS, get_config           typed architecture config and presets
    VFMVAE, VFMVAEOutput                         the tokenizer (encode / decode / forward)
    Decoder, DecoderOutput                       decoder alone (buildable without the VFM)
    LatentHead, DiagonalGaussian                 encoder head and posterior
    SynthesisBlock                               the decoder's FSDP-wrap / activation-checkpoint unit
    from_official, load_official_state_dict      official checkpoints / release files
    TextCondition, BatchConditioner              conditional decoders (docs/conditional.md)
"""

from .conditioning import BatchConditioner, TextCondition
from .config import PRESETS, VFMVAEConfig, get_config
from .convert import config_from_official, load_official_state_dict
from .decoder import Decoder, DecoderOutput
from .latent_head import LatentHead
from .model import VFMVAE, VFMVAEOutput
from .official import from_official
from .posterior import DiagonalGaussian
from .synthesis import SynthesisBlock

__all__ = [
    "PRESETS",
    "VFMVAEConfig",
    "get_config",
    "VFMVAE",
    "VFMVAEOutput",
    "Decoder",
    "DecoderOutput",
    "LatentHead",
    "DiagonalGaussian",
    "from_official",
    "load_official_state_dict",
    "config_from_official",
    "SynthesisBlock",
    "TextCondition",
    "BatchConditioner",
]

# The tokenizer interface and the baseline tokenizers (VA-VAE, SD-VAE; paper Table 1). The baselines are
# resolved lazily: `vfmvae.baselines` imports this package (interface, posterior), so an eager import would be a cycle.
from .interface import Posterior, Tokenizer, TokenizerRecordMixin, check_tokenizer  # noqa: E402

_BASELINE_EXPORTS = {
    "from_official_vavae": "vfmvae.baselines.ldm_checkpoint",
    "load_vavae_state_dict": "vfmvae.baselines.ldm_checkpoint",
    "from_diffusers_autoencoder": "vfmvae.baselines.diffusers_checkpoint",
}


def __getattr__(name: str):
    if name in _BASELINE_EXPORTS:
        import importlib

        return getattr(importlib.import_module(_BASELINE_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ += ["Tokenizer", "Posterior", "TokenizerRecordMixin", "check_tokenizer", *_BASELINE_EXPORTS]
