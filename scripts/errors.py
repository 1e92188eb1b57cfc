"""What the scripts share for bad input: the ``--trust-pickle`` flag and one-line errors instead of tracebacks.

``run_cli(main, argv, prog)`` calls ``main(argv)``; a missing file, a file refused or unreadable
(`vfmvae.utils.safe_load.UserFileError`) or a value the inputs' checks refuse (``ValueError``/``KeyError`` raised
before any work starts, see each script) ends with ``<prog>: error: <message>`` on one line and exit status 2,
like argparse's own errors. ``VFMVAE_TRACEBACK=1`` re-raises with the traceback. Tests call ``main`` directly
and see the exceptions.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["InputError", "add_trust_pickle_argument", "run_cli"]


class InputError(ValueError):
    """A command-line input the script refuses before doing any work (one-line message)."""


def add_trust_pickle_argument(parser: argparse.ArgumentParser) -> None:
    from vfmvae.utils.safe_load import TRUST_PICKLE_HELP

    parser.add_argument("--trust-pickle", action="store_true", help=TRUST_PICKLE_HELP)


def run_cli(main: Callable[[list[str] | None], Any], argv: list[str] | None, prog: str) -> Any:
    """``main(argv)`` with input errors printed as one line (exit status 2); see the module docstring."""
    from vfmvae.utils.safe_load import UserFileError

    try:
        return main(argv)
    except (FileNotFoundError, UserFileError, InputError) as err:
        if os.environ.get("VFMVAE_TRACEBACK"):
            raise
        print(f"{prog}: error: {' '.join(str(err).split())}", file=sys.stderr)
        raise SystemExit(2) from err
