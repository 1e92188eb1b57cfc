"""The console policy: our lines, Lightning's progress bar and real warnings; third-party noise is dropped here.

This is the ONE place where output of other libraries is filtered (docs/commands.md, "Console"). Every entry
of `WARNING_FILTERS` and `LOG_FILTERS` says why the line cannot help a user of this project: an advertisement,
a deprecation inside a library we do not call ourselves, a check that does not apply to how our modules are
built. A warning that can be acted on is never listed. ``VFMVAE_VERBOSE=1`` turns the filters off (to see
everything while debugging).

`quiet_console()` is called by the ``vfmvae`` commands and the LightningCLI entry point before any work starts;
it is idempotent. Plain Python: the filters match message text and logger names, Lightning is not imported.
"""

from __future__ import annotations

import logging
import os
import re
import warnings

__all__ = ["LOG_FILTERS", "WARNING_FILTERS", "NoiseFilter", "quiet_console"]

# (message regex matched at the start of the warning text, why it is dropped)
WARNING_FILTERS: tuple[tuple[str, str], ...] = (
    (
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        "torch deprecates LeafSpec; the call is inside Lightning's own _pytree helper, not in this project, and "
        "it is printed on every run",
    ),
    (
        r"LightningCLI's args parameter is intended to run from within Python",
        "the `vfmvae` dispatcher passes the command line on to LightningCLI explicitly (args == sys.argv[1:]); "
        "the warning is about mixing two different command lines, which never happens here",
    ),
    (
        r"You passed in a `val_dataloader` but have no `validation_step`",
        "a DataModule serves both tokenizer and diffusion runs; a diffusion module without validation simply "
        "does not use the split (the loop is skipped, as intended)",
    ),
    (
        r"Found \d+ module\(s\) in eval mode at the start of training",
        "the frozen foundation models, teachers and EMA copies are in eval mode on purpose (docs/design.md, "
        '"Frozen networks"); their parameters are not trained',
    ),
    (
        r"Couldn't infer the batch indices fetched from your dataloader",
        "the prediction writers of `vfmvae sample` and `vfmvae cache-latents` (callbacks/sample_writer.py, "
        "lightning_modules/latent_cache.py) take the chunk and image indices from each prediction, never from "
        "Lightning's batch_indices",
    ),
    (
        r"The number of training batches \(\d+\) is smaller than the logging interval",
        "step-based runs log every `log_every_n_steps` optimiser steps across epochs, so a short epoch still "
        "logs; the warning assumes epoch-based logging",
    ),
)

# (logger name, message regex matched at the start of the record, why it is dropped)
LOG_FILTERS: tuple[tuple[str, str, str], ...] = (
    (
        "lightning.pytorch.utilities.rank_zero",
        r"💡 Tip:",
        "advertisements for Lightning's cloud services (litlogger / litmodels), printed on every run",
    ),
    (
        "lightning.pytorch.utilities.rank_zero",
        r"(GPU|TPU|HPU) available: ",
        "environment banner; the run's accelerator is in its saved config, and a GPU that is present but "
        "unused still gets Lightning's separate 'GPU available but not used' warning",
    ),
)


class NoiseFilter(logging.Filter):
    """Drops records whose message starts with one of ``patterns`` (compiled regexes)."""

    def __init__(self, patterns: list[re.Pattern]) -> None:
        super().__init__("vfmvae.console")
        self.patterns = patterns

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.match(message) for p in self.patterns)


_installed = False


def quiet_console() -> None:
    """Install the filters above (warnings and loggers) once per process; a no-op with ``VFMVAE_VERBOSE=1``."""
    global _installed
    if _installed or os.environ.get("VFMVAE_VERBOSE", "") not in ("", "0"):
        return
    for pattern, _why in WARNING_FILTERS:
        warnings.filterwarnings("ignore", message=pattern)
    by_logger: dict[str, list[re.Pattern]] = {}
    for name, pattern, _why in LOG_FILTERS:
        by_logger.setdefault(name, []).append(re.compile(pattern))
    for name, patterns in by_logger.items():
        logging.getLogger(name).addFilter(NoiseFilter(patterns))
    _installed = True
