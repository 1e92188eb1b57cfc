"""The project's command line: `python -m lightning_modules {fit,validate,test,predict} --config ...`.

One complete YAML per run (`configs/tokenizer/stage*.yaml`, `configs/diffusion/*.yaml`); trainer and
strategy YAMLs stack on top with a second `--config` (e.g. `--config configs/trainer/cpu.yaml`). The
resolved config is written next to the logs (`<log_dir>/config.yaml`) so a run can be repeated exactly.

Additions over `LightningCLI`:

* a ``checkpoint:`` section (:class:`CheckpointPolicy`) that the trainer YAMLs set, so the policy
  stacks on any run: keep the last K periodic checkpoints (atomic writes), and a "best" checkpoint
  only when a validation metric is named;
* configuration mistakes end with one line naming the key or path: unknown keys (with a close match),
  wrong types, a key given twice in one YAML mapping (`lightning_modules/strict_yaml.py`), files/folders
  that do not exist, values a constructor or a ``setup`` refuses (the object and argument are found from the
  traceback, `config_errors.attribute_error`), and a latent cache that does not fit the model
  (:class:`ConfigError`, exit status 2 from :func:`main`; ``VFMVAE_TRACEBACK=1`` shows the traceback);
* one folder per run and resume by checkpoint (`lightning_modules/run_folders.py`): a fresh ``fit`` never
  writes into an existing run folder, a resumed one writes into its checkpoint's; ``--ckpt_path last`` takes
  the newest complete checkpoint; leftovers of killed checkpoint writes are removed; this run's arguments
  win over the checkpoint's, and each difference is logged (the optimiser's restored hyper-parameters too:
  `callbacks/resume_arguments.py`);
* ``--trust-pickle``: weight files named by the config may be unpickled in full (default: never,
  `vfmvae.utils.safe_load`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any, Literal

# Hub access is off unless the user turns it on; it must be set before transformers/timm import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from lightning.pytorch import LightningDataModule, LightningModule, Trainer  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.cli import LightningCLI  # noqa: E402

from lightning_modules import run_folders, strict_yaml  # noqa: E402
from lightning_modules.config_errors import (  # noqa: E402
    ConfigError,
    attribute_error,
    error_chain,
    explain_parse_error,
    keys_mentioned,
    one_line,
    origin_error,
)
from lightning_modules.progress import use_step_progress_bar  # noqa: E402
from lightning_modules.run_folders import argument_changes, read_checkpoint_header, resolve_resume  # noqa: E402
from vfmvae.utils.checkpoint_files import remove_stale_temporaries  # noqa: E402
from vfmvae.utils.console import quiet_console  # noqa: E402
from vfmvae.utils.safe_load import (  # noqa: E402
    TRUST_PICKLE_HELP,
    pickles_trusted,
    set_pickle_trust,
    trusting_pickles,
)

log = logging.getLogger(__name__)
__all__ = ["CheckpointPolicy", "ConfigError", "VFMVAECLI", "apply_checkpoint_policy", "explain_parse_error", "main"]


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
def _config_error(config: Any, err: BaseException, doing: str) -> ConfigError:
    """`config_errors.attribute_error`, with the latent-cache mismatch named on both sides."""
    message = one_line(origin_error(err))
    # lightning_modules/diffusion.py reports a latent cache that does not fit the network with a plain ValueError;
    # the cache is named by the data config and the shape by the model's, so both keys are named.
    if not keys_mentioned(config, message) and "latent" in message and ("shape" in message or "tokenizer" in message):
        return ConfigError(
            "config error: the tokenizer that wrote the latent cache (data: latent_root / the cache manifest) "
            f"does not match the model (model.init_args.network_overrides: in_channels / input_size): {message}"
        )
    return attribute_error(config, err, doing)


def _is_rank_zero() -> bool:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


class VFMVAECLI(LightningCLI):
    """LightningCLI with the project's defaults (see the module docstring).

    Models and data modules are given as `class_path`/`init_args` in the YAML (subclass mode), so a
    single entry point serves the tokenizer, latent caching and the diffusion runs.
    """

    def add_arguments_to_parser(self, parser) -> None:  # noqa: D401 - LightningCLI hook
        parser.add_class_arguments(CheckpointPolicy, "checkpoint", instantiate=True)
        parser.add_argument("--trust-pickle", action="store_true", help=TRUST_PICKLE_HELP)

    def parse_arguments(self, parser, args) -> None:
        from jsonargparse import ArgumentError

        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            duplicate = next((e for e in error_chain(err) if isinstance(e, strict_yaml.DuplicateKeyError)), None)
            if duplicate is not None:
                raise ConfigError(str(duplicate)) from err
            given = sys.argv[1:] if args is None else args
            explained = explain_parse_error(err, given, {"trainer": Trainer, "checkpoint": CheckpointPolicy})
            raise ConfigError(explained or f"config error: {one_line(err)}") from err

    def _subcommand_config(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config

    # ------------------------------------------------------------------ run folder and resume
    def _parse_ckpt_path(self) -> None:
        """Replaces LightningCLI's, which overwrote this run's model arguments with the checkpoint's."""
        subcommand = self.config.get("subcommand")
        self._resumed_from: Path | None = None
        self._notes: list[str] = []
        section = self.config[subcommand] if subcommand else self.config
        set_pickle_trust(bool(section.get("trust_pickle")))  # main() resets it when the run ends
        if subcommand != "fit":
            ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
            if ckpt_path and Path(ckpt_path).is_file():
                read_checkpoint_header(ckpt_path)  # a truncated or unsafe file: one line, not a traceback
            super()._parse_ckpt_path()  # evaluation uses the model as it was trained
            return
        config = self.config["fit"]
        decision = resolve_resume(config.get("ckpt_path"), config.as_dict())
        config["ckpt_path"] = decision.checkpoint
        for note in decision.notes:
            self._say(note)
        if decision.checkpoint is not None and Path(decision.checkpoint).exists():
            self._prepare_resume(config, Path(decision.checkpoint))
        else:
            self._prepare_fresh_run(config)
        if _is_rank_zero():
            for folder in run_folders.checkpoint_folders(config.as_dict()):
                remove_stale_temporaries(folder)

    def _say(self, line: str) -> None:
        """Log ``line`` on rank 0 once the run is built (a config error found later makes it moot)."""
        if _is_rank_zero():
            self._notes.append(line)

    @staticmethod
    def _logger_spec(config: Any, index: int | None) -> Any:
        loggers = config["trainer"]["logger"]
        return loggers if index is None else loggers[index]

    def _prepare_fresh_run(self, config: Any) -> None:
        """Move each TensorBoard/CSV logger whose folder is taken to a new ``<version>-k`` (rank 0 decides)."""
        if not _is_rank_zero():
            return  # Lightning broadcasts rank 0's log_dir and checkpoint folder to the other ranks
        for folder in run_folders.logger_folders(config.as_dict()):
            version = run_folders.claim_fresh_version(folder)
            if version is not None:
                self._logger_spec(config, folder.index)["init_args"]["version"] = version
                self._say(
                    f"{folder.root / folder.version_name} holds another run: this run writes to "
                    f"{folder.root / version} (resume a run with --ckpt_path)"
                )

    def _prepare_resume(self, config: Any, checkpoint: Path) -> None:
        """Log the arguments that differ from the checkpoint's; write into the checkpoint's run folder."""
        header = read_checkpoint_header(checkpoint)
        if "pytorch-lightning_version" not in header:
            raise ConfigError(
                f"config error at ckpt_path: {checkpoint} is not a Lightning training checkpoint (a weights file? "
                "--ckpt_path resumes a run; weights initialise one through the model's own arguments)"
            )
        plain = config.as_dict()
        changes = argument_changes(header.get("hyper_parameters") or {}, plain.get("model") or {}, "model")
        if header.get("datamodule_hyper_parameters") and isinstance(plain.get("data"), dict):
            changes += argument_changes(header["datamodule_hyper_parameters"], plain["data"], "data")
        for key, old, new in changes:
            self._say(f"resume: {key}: {old!r} (checkpoint) -> {new!r} (this run)")
        self._resumed_from = checkpoint
        step = int(header.get("global_step") or 0)
        # The first segment's config.yaml stays; this segment's config goes beside it.
        self.save_config_kwargs = {**self.save_config_kwargs, "config_filename": f"config.resume-step{step:09d}.yaml"}
        run = run_folders.run_folder_of_checkpoint(checkpoint)
        folders = run_folders.logger_folders(plain)
        if not folders or run_folders.explicit_checkpoint_dirs(plain):
            return
        if run is None:
            self._say(f"{checkpoint} is not in a run's checkpoints/ folder: this run gets a new run folder")
            self._prepare_fresh_run(config)
            return
        first = folders[0]
        for folder in folders:
            if folder is first or folder.root == first.root:
                spec = self._logger_spec(config, folder.index)["init_args"]
                if folder is first and first.root.resolve() != run.parent.resolve():
                    spec["save_dir"], spec["name"] = str(run.parent.parent), run.parent.name
                spec["version"] = run.name

    # ------------------------------------------------------------------ building and running
    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (FileNotFoundError, ValueError, KeyError, TypeError) as err:
            if isinstance(err, ConfigError):
                raise
            wrapped = _config_error(self._subcommand_config(), err, "building the model, data and trainer")
            if isinstance(origin_error(err), TypeError) and not wrapped.args[0].startswith("config error at"):
                raise  # a TypeError no config key explains is a bug: keep its traceback
            raise wrapped from err

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        use_step_progress_bar(trainer)  # steps of max_steps, not `Epoch 3/-2` (lightning_modules/progress.py)
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        policy = config.get("checkpoint")
        if isinstance(policy, CheckpointPolicy):
            apply_checkpoint_policy(trainer, policy, config.get("trainer.enable_checkpointing"))
        if getattr(self, "_resumed_from", None) is not None:
            from callbacks.resume_arguments import ResumeArgumentsCallback

            trainer.callbacks = [ResumeArgumentsCallback(), *trainer.callbacks]
        for note in getattr(self, "_notes", []):
            log.warning(note)
        return trainer

    def fit(self, model: LightningModule, **kwargs: Any) -> None:
        """``trainer.fit`` with configuration mistakes found during setup reported by config key."""
        self._check_global_batch(model)
        if kwargs.get("weights_only") is None:
            # Lightning's own resume: weights_only unless --trust-pickle (it would default to a full unpickle for
            # URLs, and FSDP2Strategy for its metadata file)
            kwargs["weights_only"] = not pickles_trusted()
        try:
            self.trainer.fit(model, **kwargs)
        except (FileNotFoundError, ValueError, KeyError) as err:
            if isinstance(err, ConfigError) or self.trainer.global_step > 0:
                raise  # a failure during training is not a configuration mistake
            raise _config_error(self._subcommand_config(), err, "setting up the run") from err

    def _check_global_batch(self, model: LightningModule) -> None:
        """Both modules split ``global_batch_size`` evenly over the processes (docs/design.md, "Image counters and
        schedules"); checked here, before DDP starts its processes, so the mistake is reported once."""
        batch = getattr(model, "hparams", {}).get("global_batch_size")
        world = self.trainer.num_devices * self.trainer.num_nodes
        if isinstance(batch, int) and world > 1 and batch % world:
            raise ConfigError(
                f"config error at model.init_args.global_batch_size: {batch} images per step do not split evenly "
                f"over {world} processes (trainer.devices {self.trainer.num_devices} x trainer.num_nodes "
                f"{self.trainer.num_nodes}); choose a multiple of {world}"
            )


def main(args: list[str] | None = None) -> VFMVAECLI:
    """Entry point of `python -m lightning_modules` and of the `vfmvae` console script.

    A :class:`ConfigError` (or a duplicate YAML key) is printed as one line (``config error: ...``) and exits
    with status 2; with ``VFMVAE_TRACEBACK=1`` it is raised with its traceback instead.
    """
    quiet_console()  # third-party noise filtered at one place (vfmvae/utils/console.py)
    try:
        with trusting_pickles(False):  # --trust-pickle turns it on for this run only
            return VFMVAECLI(
                model_class=LightningModule,
                datamodule_class=LightningDataModule,
                subclass_mode_model=True,
                subclass_mode_data=True,
                # Each fresh run has a folder of its own (run_folders); a resumed one writes config.resume-*.yaml.
                save_config_kwargs={"overwrite": True},
                parser_kwargs={"exit_on_error": False, "parser_mode": strict_yaml.register()},
                args=args,  # None = sys.argv[1:]
                auto_configure_optimizers=False,
            )
    except (ConfigError, strict_yaml.DuplicateKeyError) as err:
        if os.environ.get("VFMVAE_TRACEBACK"):
            raise
        print(str(err), file=sys.stderr)
        raise SystemExit(2) from err
