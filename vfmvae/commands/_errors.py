"""What the commands share for bad input: the ``--trust-pickle`` flag and one-line errors instead of tracebacks.

A command module defines ``run(argv)`` (does the work, raises, returns its result: tests call it) and
``main(argv) = run_cli(run, argv, "vfmvae <name>")``. A missing file, a file refused or unreadable
(`vfmvae.utils.safe_load.UserFileError`) or a value the inputs' checks refuse (`InputError`, raised before any
work starts, see each command) ends with ``vfmvae <name>: error: <message>`` on one line and exit status 2, like
argparse's own errors. ``VFMVAE_TRACEBACK=1`` re-raises with the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["InputError", "add_progress_argument", "add_trust_pickle_argument", "run_cli"]


class InputError(ValueError):
    """A command-line input the command refuses before doing any work (one-line message)."""


def add_trust_pickle_argument(parser: argparse.ArgumentParser) -> None:
    from vfmvae.utils.safe_load import TRUST_PICKLE_HELP

    parser.add_argument("--trust-pickle", action="store_true", help=TRUST_PICKLE_HELP)


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (it is also off when stderr is not a terminal)"
    )


def run_cli(run: Callable[[list[str] | None], Any], argv: list[str] | None, prog: str) -> int:
    """``run(argv)`` on a quiet console (`vfmvae.utils.console`) with input errors printed as one line (exit
    status 2); its status when an int, else 0."""
    from vfmvae.utils.console import quiet_console
    from vfmvae.utils.safe_load import UserFileError

    quiet_console()  # third-party noise filtered at one place (vfmvae/utils/console.py)
    try:
        result = run(argv)
    except (FileNotFoundError, UserFileError, InputError) as err:
        if os.environ.get("VFMVAE_TRACEBACK"):
            raise
        print(f"{prog}: error: {' '.join(str(err).split())}", file=sys.stderr)
        raise SystemExit(2) from err
    return result if isinstance(result, int) else 0
