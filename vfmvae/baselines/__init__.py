"""Baseline tokenizers of the paper's comparison (paper Table 1): VA-VAE and SD-VAE, in plain PyTorch.

Both are the LDM / diffusers KL autoencoder (`KLAutoencoder`), loaded from the official weights by strict key
converters; both follow the project's tokenizer conventions (`vfmvae.tokenizer.interface.Tokenizer`).

Public entry points:
    KLAutoencoder, KLAutoencoderConfig           the network and its config
    BASELINE_PRESETS, get_baseline_config        "vavae-f16d32", "sd-vae-ft-ema"
    from_official_vavae, load_vavae_state_dict   LightningDiT's released VA-VAE checkpoint (LDM key names)
    from_diffusers_autoencoder                   diffusers AutoencoderKL folder / weights (SD-VAE)
    encode_images, decode_to_images              LightningDiT's VA_VAE calling conventions
"""

from .autoencoder import KLAutoencoder, KLAutoencoderOutput
from .config import BASELINE_PRESETS, KLAutoencoderConfig, from_diffusers_config, from_ldm_ddconfig, get_baseline_config
from .diffusers_checkpoint import from_diffusers_autoencoder
from .ldm_checkpoint import from_official_vavae, load_vavae_state_dict
from .vavae import decode_to_images, encode_images, sample_cpu_rng

__all__ = [
    "KLAutoencoder",
    "KLAutoencoderOutput",
    "KLAutoencoderConfig",
    "BASELINE_PRESETS",
    "get_baseline_config",
    "from_ldm_ddconfig",
    "from_diffusers_config",
    "from_official_vavae",
    "load_vavae_state_dict",
    "from_diffusers_autoencoder",
    "encode_images",
    "decode_to_images",
    "sample_cpu_rng",
]
