"""Benchmark throughput, peak memory and MFU of training, sampling, caching and CKNNA (`make bench`).

    vfmvae bench --suite cpu --threads 1 --max-seconds 200      # what `make bench` runs
    vfmvae bench --suite gpu --only LightningDiT --compile

The suites and the table are `benchmarks/` (docs/benchmarks.md); this command is their entry point next to the
others. It lives here, not in vfmvae/commands/, because `benchmarks/` is a layer above `vfmvae/`
(docs/design.md, "Layers of the code"). `benchmarks/` sits beside the packages in the checkout (run from the repository root, as `make` does).
"""

from __future__ import annotations

import argparse
import importlib.util

from vfmvae.utils.console import quiet_console

PROG = "vfmvae bench"


def _benchmarks_run():
    # benchmarks/ is installed with the package; a broken install gets a one-line error instead of an ImportError.
    if importlib.util.find_spec("benchmarks") is None:
        raise SystemExit(
            f"{PROG}: error: the benchmarks package is not importable; reinstall the project (make install)"
        )
    from benchmarks import run

    return run


def build_parser() -> argparse.ArgumentParser:
    return _benchmarks_run().build_parser(prog=PROG)


def run(argv: list[str] | None = None) -> list[dict]:
    """The benchmark rows (also printed as a table and written as JSON under --out-dir)."""
    return _benchmarks_run().main(argv, prog=PROG)


def main(argv: list[str] | None = None) -> int:
    quiet_console()
    run(argv)
    return 0
