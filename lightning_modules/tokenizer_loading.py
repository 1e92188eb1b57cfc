"""Moved to `vfmvae.tokenizer.loading` (callbacks must not import `lightning_modules`); kept as an alias."""

from vfmvae.tokenizer.loading import load_decoder, load_latent_stats, resolve_path

__all__ = ["load_decoder", "load_latent_stats", "resolve_path"]
