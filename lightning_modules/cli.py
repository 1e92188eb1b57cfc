"""The project's command line: `python -m lightning_modules {fit,validate,test,predict} --config ...`.

One complete YAML per run (`configs/tokenizer/stage*.yaml`, `configs/diffusion/*.yaml`); trainer and
strategy YAMLs stack on top with a second `--config` (e.g. `--config configs/trainer/cpu.yaml`). The
resolved config is written next to the logs (`<log_dir>/config.yaml`) so a run can be repeated exactly.

Additions over `LightningCLI`:

* a ``checkpoint:`` section (:class:`CheckpointPolicy`) that the trainer YAMLs set, so the policy
  stacks on any run: keep the last K periodic checkpoints (atomic writes), and a "best" checkpoint
  only when a validation metric is named;
* configuration mistakes end with one line naming the key or path: unknown keys (with a close match),
  wrong types, files/folders that do not exist, and a latent cache that does not fit the model
  (:class:`ConfigError`, exit status 2 from :func:`main`).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterator
from typing import Any, Literal

# Hub access is off unless the user turns it on; it must be set before transformers/timm import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from lightning.pytorch import LightningDataModule, LightningModule, Trainer  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.cli import LightningCLI  # noqa: E402

from lightning_modules.config_errors import explain_parse_error, one_line, origin_error  # noqa: E402


class ConfigError(ValueError):
    """A configuration mistake; the message names the config key (or path) at fault."""


@dataclasses.dataclass
class CheckpointPolicy:
    """``checkpoint:`` section of the config (set by `configs/trainer/*.yaml`).

    Attributes:
        keep_last: keep the newest K periodic checkpoints (``-1`` = all); ``None`` = leave the run
            config's own checkpoint callbacks unchanged. When set, the run's periodic (unmonitored)
            ``ModelCheckpoint`` callbacks are replaced by one atomic checkpoint callback; their
            ``every_n_train_steps`` and ``dirpath`` are kept unless given here.
        every_n_train_steps: checkpoint cadence in optimiser steps (``None`` = the run's own).
        best_metric: a logged validation metric (e.g. ``metric/psnr``); adds a "best" checkpoint. Never
            implied: a run without validation metrics has no "best".
        best_mode: ``min`` or ``max`` for ``best_metric``; keep_best: how many best to keep.
        save_last: also write ``last.ckpt`` (what ``--ckpt_path last`` resumes).
        dirpath: checkpoint folder (``None`` = the run's, else ``<log_dir>/checkpoints``).
    """

    keep_last: int | None = None
    every_n_train_steps: int | None = None
    best_metric: str | None = None
    best_mode: Literal["min", "max"] = "min"
    keep_best: int = 1
    save_last: bool = True
    dirpath: str | None = None

    def __post_init__(self) -> None:
        if self.keep_last is not None and (self.keep_last == 0 or self.keep_last < -1):
            raise ConfigError(f"checkpoint.keep_last must be -1 (all) or >= 1, got {self.keep_last}")
        if self.every_n_train_steps is not None and self.every_n_train_steps < 1:
            raise ConfigError(f"checkpoint.every_n_train_steps must be >= 1, got {self.every_n_train_steps}")
        if self.keep_best < 1:
            raise ConfigError(f"checkpoint.keep_best must be >= 1, got {self.keep_best}")

    @property
    def active(self) -> bool:
        return self.keep_last is not None or self.best_metric is not None


def apply_checkpoint_policy(
    trainer: Trainer, policy: CheckpointPolicy, enable_checkpointing: bool | None = True
) -> list[ModelCheckpoint]:
    """Replace/add the trainer's checkpoint callbacks according to ``policy``; returns the new ones."""
    from callbacks.atomic_checkpoint import AtomicModelCheckpoint

    if not policy.active:
        return []
    existing = [cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)]
    if enable_checkpointing is False:
        raise ConfigError("checkpoint: a checkpoint policy is set but trainer.enable_checkpointing is false")
    periodic = [cb for cb in existing if cb.monitor is None]
    added: list[ModelCheckpoint] = []
    dirpath = policy.dirpath or next((cb.dirpath for cb in periodic if cb.dirpath), None)
    if policy.keep_last is not None:
        every = policy.every_n_train_steps or next(
            (cb._every_n_train_steps for cb in periodic if cb._every_n_train_steps), None
        )
        trainer.callbacks = [cb for cb in trainer.callbacks if cb not in periodic]
        # monitor="step", mode="max": top-k by step = the newest k (the policy's "keep last K").
        added.append(
            AtomicModelCheckpoint(
                dirpath=dirpath,
                filename="{step:09d}",
                every_n_train_steps=every,
                save_top_k=policy.keep_last,
                monitor="step",
                mode="max",
                save_last=policy.save_last,
            )
        )
    if policy.best_metric is not None:
        added.append(
            AtomicModelCheckpoint(
                dirpath=dirpath,
                filename="best-{step:09d}",
                monitor=policy.best_metric,
                mode=policy.best_mode,
                save_top_k=policy.keep_best,
                save_last=False,
            )
        )
    trainer.callbacks = list(trainer.callbacks) + added  # checkpoint callbacks run last
    return added


# ---------------------------------------------------------------------- error messages
def _config_items(config: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, leaf value) pairs of a (namespace / dict / list) config."""
    if hasattr(config, "as_dict"):
        config = config.as_dict()
    if isinstance(config, dict):
        for k, v in config.items():
            yield from _config_items(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(config, (list, tuple)):
        for i, v in enumerate(config):
            yield from _config_items(v, f"{prefix}[{i}]")
    else:
        yield prefix, config


def keys_mentioned(config: Any, message: str) -> list[str]:
    """Config keys whose (path-like) string value appears in ``message``."""
    found = {}
    for key, value in _config_items(config):
        if isinstance(value, str) and len(value) > 1 and ("/" in value or os.sep in value) and value in message:
            found[key] = value
    # A folder that merely contains the path at fault (e.g. default_root_dir) is not the culprit.
    return [k for k, v in found.items() if not any(v != w and w.startswith(v) for w in found.values())]


def attribute_error(config: Any, err: BaseException, doing: str) -> ConfigError | None:
    """A :class:`ConfigError` naming the config key(s) behind ``err``, or None if none is found.

    jsonargparse wraps a constructor's exception in its own reports; the constructor's exception is found by
    walking the ``__cause__`` chain (:func:`origin_error`), and the config keys whose path-like values its
    message quotes are named.
    """
    origin = origin_error(err)
    message = one_line(origin)
    keys = keys_mentioned(config, message)
    if keys:
        return ConfigError(f"config error at {', '.join(keys)}: {message}")
    # Fallback that reads text: lightning_modules/diffusion.py reports a latent cache that does not fit the
    # network with a plain ValueError; a dedicated exception type there would make this an isinstance check.
    if "latent" in message and ("shape" in message or "tokenizer" in message):
        return ConfigError(
            "config error: the tokenizer that wrote the latent cache (data: latent_root / the cache manifest) "
            f"does not match the model (model.init_args.network_overrides: in_channels / input_size): {message}"
        )
    if isinstance(origin, FileNotFoundError):
        return ConfigError(f"config error while {doing}: {message}")
    return None


class VFMVAECLI(LightningCLI):
    """LightningCLI with the project's defaults (see the module docstring).

    Models and data modules are given as `class_path`/`init_args` in the YAML (subclass mode), so a
    single entry point serves the tokenizer, latent caching and the diffusion runs.
    """

    def add_arguments_to_parser(self, parser) -> None:  # noqa: D401 - LightningCLI hook
        parser.add_class_arguments(CheckpointPolicy, "checkpoint", instantiate=True)

    def parse_arguments(self, parser, args) -> None:
        from jsonargparse import ArgumentError

        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            given = sys.argv[1:] if args is None else args
            explained = explain_parse_error(err, given, {"trainer": Trainer, "checkpoint": CheckpointPolicy})
            raise ConfigError(explained or f"config error: {one_line(err)}") from err

    def _subcommand_config(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (FileNotFoundError, ValueError, KeyError, TypeError) as err:
            if isinstance(err, ConfigError):
                raise
            wrapped = attribute_error(self._subcommand_config(), err, "building the model, data and trainer")
            if wrapped is None:
                raise
            raise wrapped from err

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        policy = config.get("checkpoint")
        if isinstance(policy, CheckpointPolicy):
            apply_checkpoint_policy(trainer, policy, config.get("trainer.enable_checkpointing"))
        return trainer

    def fit(self, model: LightningModule, **kwargs: Any) -> None:
        """``trainer.fit`` with configuration mistakes found during setup reported by config key."""
        try:
            self.trainer.fit(model, **kwargs)
        except (FileNotFoundError, ValueError) as err:
            if isinstance(err, ConfigError) or self.trainer.global_step > 0:
                raise  # a failure during training is not a configuration mistake
            wrapped = attribute_error(self._subcommand_config(), err, "setting up the run")
            if wrapped is None:
                raise
            raise wrapped from err


def main(args: list[str] | None = None) -> VFMVAECLI:
    """Entry point of `python -m lightning_modules` and of the `vfmvae` console script.

    A :class:`ConfigError` is printed as one line (``config error: ...``) and exits with status 2.
    """
    try:
        return VFMVAECLI(
            model_class=LightningModule,
            datamodule_class=LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"exit_on_error": False},
            args=args,  # None = sys.argv[1:]
            auto_configure_optimizers=False,
        )
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        raise SystemExit(2) from err
