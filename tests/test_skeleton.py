"""Project-level invariants: layout rules and the CLI entry point."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_vfmvae_never_imports_lightning():
    """Numerics stay plain PyTorch (docs/design.md, "Layers of the code"): no file under vfmvae/ imports Lightning."""
    offenders = []
    files = sorted((REPO / "vfmvae").rglob("*.py"))
    assert files, "vfmvae/ has no Python files"
    for f in files:
        bad = _imported_modules(f) & {"lightning", "pytorch_lightning", "lightning_fabric"}
        if bad:
            offenders.append(f"{f.relative_to(REPO)}: {sorted(bad)}")
    assert not offenders, "vfmvae/ must not import Lightning:\n" + "\n".join(offenders)


def test_import_check_detects_lightning(tmp_path):
    """The checker above can fail: a file importing lightning is detected."""
    f = tmp_path / "bad.py"
    f.write_text("import os\nfrom lightning.pytorch import Trainer\n")
    assert "lightning" in _imported_modules(f)


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
