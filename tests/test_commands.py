"""The ``vfmvae`` command: every subcommand answers ``--help``, ``vfmvae --help`` lists them, the Makefile calls
them, and no file edits ``sys.path`` (docs/commands.md)."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys

import pytest

from lightning_modules.__main__ import _command_modules, usage

# The commands the Makefile's targets run; a missing one (a module renamed or deleted) fails here by name.
EXPECTED = {
    "bench",
    "cache-latents",
    "demo",
    "eval-reconstruction",
    "evaluate",
    "export-dit",
    "make-filter-list",
    "push-to-hub",
    "report",
    "sample",
    "se-cknna",
}
COMMANDS = sorted(_command_modules().items())


def test_every_expected_command_is_found():
    assert EXPECTED <= set(_command_modules()), EXPECTED - set(_command_modules())


@pytest.mark.parametrize(("name", "module_path"), COMMANDS, ids=[name for name, _ in COMMANDS])
def test_subcommand_help_exits_0(name, module_path, capsys):
    module = importlib.import_module(module_path)
    assert callable(module.build_parser) and callable(module.main)
    with pytest.raises(SystemExit) as info:
        module.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: vfmvae {name}"), out[:200]


def test_vfmvae_help_lists_every_command_with_its_line():
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_modules", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == usage() + "\n"
    listed = {m.group(1): m.group(2) for m in re.finditer(r"^  (\S+) +(.+)$", proc.stdout, flags=re.M)}
    for name in ("fit", "validate", "test", "predict", *EXPECTED):
        assert listed.get(name), f"{name} missing from `vfmvae --help`"


def test_unknown_command_is_one_line_and_status_2():
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_modules", "sampel"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "unknown command 'sampel'" in proc.stderr


def _python_files(repo_root):
    skip = {".venv", "outputs", ".git"}
    return [p for p in repo_root.rglob("*.py") if not skip & set(p.relative_to(repo_root).parts)]


def test_no_file_edits_sys_path(repo_root):
    """Commands are modules of installed packages; nothing reaches into the checkout by path."""
    offenders = []
    for path in _python_files(repo_root):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys":
                offenders.append(f"{path.relative_to(repo_root)}:{node.lineno}")
    assert offenders == [], offenders


def test_lightning_commands_need_their_folder(repo_root):
    """`lightning_modules/commands/` holds commands that import Lightning or a layer above `vfmvae/`; a command
    that needs neither belongs in `vfmvae/commands/` (docs/design.md, "Layers of the code")."""
    above = ("lightning", "datamodules", "callbacks", "lightning_modules", "benchmarks")
    misplaced = []
    for path in sorted((repo_root / "lightning_modules" / "commands").glob("[!_]*.py")):
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and not n.level]
        if not any(name.split(".")[0] in above for name in names):
            misplaced.append(path.name)
    assert misplaced == [], misplaced


def test_makefile_runs_commands_not_script_files(repo_root):
    makefile = (repo_root / "Makefile").read_text()
    assert not re.search(r"\$\(PY\) +(scripts|benchmarks)/", makefile)
    assert "$(PY) -m benchmarks" not in makefile
    for name in EXPECTED:
        assert f"$(PY) -m lightning_modules {name}" in makefile, name


@pytest.mark.parametrize(
    ("target", "variable"),
    [("report", "RUN"), ("filter-list", "ROOT"), ("export-dit", "CKPT"), ("push-to-hub", "FOLDER")],
)
def test_new_make_targets_name_a_missing_variable(repo_root, target, variable):
    proc = subprocess.run(["make", "-s", "-C", str(repo_root), target], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and f"{target}: {variable} is not set" in proc.stderr, proc.stderr
