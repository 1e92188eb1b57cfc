"""`python -m vfmvae.report RUN_DIR [--out DIR]`: the same as ``vfmvae report`` (`vfmvae/commands/report.py`)."""

from __future__ import annotations

import sys

from vfmvae.commands.report import main as _command_main


def main(argv: list[str] | None = None) -> int:
    return _command_main(argv, prog="python -m vfmvae.report")


if __name__ == "__main__":
    sys.exit(main())
