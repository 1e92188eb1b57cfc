"""The project's command line: `python -m lightning_modules {fit,validate,test,predict} --config ...`.

One complete YAML per run (`configs/tokenizer/stage*.yaml`, `configs/diffusion/*.yaml`); trainer and
strategy YAMLs stack on top with a second `--config` (e.g. `--config configs/trainer/cpu.yaml`). The
resolved config is written next to the logs (`<log_dir>/config.yaml`) so a run can be repeated exactly.
"""

from __future__ import annotations

import os
import sys

# Hub access is off unless the user turns it on; it must be set before transformers/timm import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from lightning.pytorch import LightningDataModule, LightningModule  # noqa: E402
from lightning.pytorch.cli import LightningCLI  # noqa: E402


class VFMVAECLI(LightningCLI):
    """LightningCLI with the project's defaults.

    Models and data modules are given as `class_path`/`init_args` in the YAML (subclass mode), so a
    single entry point serves the tokenizer, latent caching and the diffusion runs.
    """

    def add_arguments_to_parser(self, parser) -> None:  # noqa: D401 - LightningCLI hook
        # Hook for argument linking; modules that expose matching attributes link here.
        pass


def main(args: list[str] | None = None) -> VFMVAECLI:
    """Entry point of `python -m lightning_modules` and of the `vfmvae` console script."""
    return VFMVAECLI(
        model_class=LightningModule,
        datamodule_class=LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args if args is not None else sys.argv[1:],
        auto_configure_optimizers=False,
    )

