"""The analysis commands and make targets: `vfmvae linear-probe|table1 --help`, and missing make variables named."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("command", ["linear-probe", "table1"])
def test_command_help_through_the_dispatcher(repo_root, command):
    from lightning_modules.__main__ import usage

    assert command in usage()
    proc = subprocess.run([sys.executable, "-m", "lightning_modules", command, "--help"], cwd=repo_root,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "--config" in proc.stdout


def make(repo_root, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", "-C", str(repo_root), *args], capture_output=True, text=True, timeout=600)


def test_linear_probe_target_names_missing_variables(repo_root, tmp_path):
    proc = make(repo_root, "linear-probe")
    assert proc.returncode != 0 and "TOKENIZER is not set" in proc.stderr, proc.stderr
    proc = make(repo_root, "linear-probe", "TOKENIZER=none")
    assert proc.returncode != 0 and "DATA_ROOT is not set" in proc.stderr, proc.stderr
    proc = make(repo_root, "linear-probe", "TOKENIZER=none", f"DATA_ROOT={tmp_path}")
    assert proc.returncode != 0 and "must hold train/ and val/" in proc.stderr, proc.stderr
    (tmp_path / "train").mkdir(), (tmp_path / "val").mkdir()
    proc = make(repo_root, "-n", "linear-probe", "TOKENIZER=t", f"DATA_ROOT={tmp_path}", "TOKENIZER_PRESET=debug-vavae")
    assert '-m lightning_modules linear-probe --tokenizer "t"' in proc.stdout, proc.stdout + proc.stderr
    assert "--tokenizer-preset debug-vavae" in proc.stdout


def test_table1_targets_run_the_command(repo_root):
    assert "table1 --config configs/analyses/table1_demo.yaml" in make(repo_root, "-n", "demo-analyses").stdout
    assert "table1 --config configs/analyses/table1.yaml" in make(repo_root, "-n", "table1").stdout
