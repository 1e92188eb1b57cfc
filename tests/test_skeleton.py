"""The CLI entry point and `make help` (the layout rules are in tests/test_repo_layout.py)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_cli_help():
    out = subprocess.run(
        [sys.executable, "-m", "lightning_modules", "--help"], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert out.returncode == 0, out.stderr
    for sub in ("fit", "validate", "test", "predict"):
        assert sub in out.stdout


def test_cli_fit_help_lists_trainer_options():
    out = subprocess.run(
        [sys.executable, "-m", "lightning_modules", "fit", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "--trainer.max_steps" in out.stdout and "--config" in out.stdout


def test_makefile_help_lists_targets():
    out = subprocess.run(["make", "-s", "help"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    for target in ("install", "test", "lint"):
        assert target in out.stdout
