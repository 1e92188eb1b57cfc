"""Subcommands of ``vfmvae`` that run Lightning (one module per command; rules in `vfmvae/commands/__init__.py`)."""
