"""VFM-VAE tokenizer network (arXiv 2510.18457): frozen VFM + latent head + decoder, in plain PyTorch.

Public entry points:
    VFMVAEConfig, PRESETS, get_config           typed architecture config and presets
    VFMVAE, VFMVAEOutput                         the tokenizer (encode / decode / forward)
    Decoder, DecoderOutput                       decoder alone (buildable without the VFM)
    LatentHead, DiagonalGaussian                 encoder head and posterior
    SynthesisBlock                               the decoder's FSDP-wrap / activation-checkpoint unit
    from_official, load_official_state_dict      official checkpoints / release files
"""

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
]
