"""VFM-VAE: vision-foundation-model tokenizers for latent diffusion (arXiv 2510.18457).

Plain PyTorch only: nothing in this package imports Lightning (a test enforces it).
"""

__version__ = "0.1.0"
