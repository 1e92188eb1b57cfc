"""Write one self-contained HTML page (report.html) of a run: losses, learning rate, grids, metrics, config.

    vfmvae report RUN_DIR [--out DIR] [--quiet]
    make report RUN=outputs/demo

The page is `vfmvae.report.write_report` (docs/report.md): RUN_DIR is a run's log folder or a root holding runs;
the page goes to DIR/report.html (default RUN_DIR/report.html) and its path is printed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from vfmvae.utils.console import quiet_console

PROG = "vfmvae report"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Write one self-contained HTML page (report.html) of the run(s) under RUN_DIR: losses, "
        "learning rate, skipped steps, CKNNA heat-map, newest image grids, metrics, config.",
    )
    parser.add_argument("run_dir", help="a run's log folder (<save_dir>/<name>/<version>) or a root holding runs")
    parser.add_argument("--out", default=None, help="folder for report.html (default: RUN_DIR)")
    parser.add_argument("--quiet", action="store_true", help="print only the page's path")
    return parser


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    args = build_parser(prog).parse_args(argv)
    quiet_console()
    os.environ.setdefault("MPLBACKEND", "Agg")  # pictures are rendered to PNG, never shown
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")

    from vfmvae.report.report import NoRunsError, write_report

    try:
        path = write_report(args.run_dir, args.out)
    except (NoRunsError, NotADirectoryError, PermissionError) as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 2
    print(path)
    if not args.quiet:
        print(f"open it with a browser: file://{path}")
    return 0
