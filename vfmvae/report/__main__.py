"""`python -m vfmvae.report RUN_DIR [--out DIR]`: write DIR/report.html (default RUN_DIR/report.html)."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vfmvae.report",
        description="Write one self-contained HTML page (report.html) of the run(s) under RUN_DIR: losses, "
        "learning rate, skipped steps, CKNNA heat-map, newest image grids, metrics, config.",
    )
    parser.add_argument("run_dir", help="a run's log folder (<save_dir>/<name>/<version>) or a root holding runs")
    parser.add_argument("--out", default=None, help="folder for report.html (default: RUN_DIR)")
    parser.add_argument("--quiet", action="store_true", help="print only the page's path")
    args = parser.parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")

    from vfmvae.report.report import NoRunsError, write_report

    try:
        path = write_report(args.run_dir, args.out)
    except (NoRunsError, NotADirectoryError, PermissionError) as err:
        print(f"vfmvae.report: {err}", file=sys.stderr)
        return 2
    print(path)
    if not args.quiet:
        print(f"open it with a browser: file://{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
