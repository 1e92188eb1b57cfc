"""The layout rules of (docs/design.md, "Layers of the code"), checked on the source with `ast` (no imports run).

- `vfmvae/` is plain PyTorch: it imports neither Lightning nor an upper layer (`datamodules`, `lightning_modules`,
  `callbacks`, `scripts`). `datamodules/` holds LightningDataModules, so it may import Lightning.
- Every module of `lightning_modules/` is Lightning-facing: it imports Lightning or, for the command line,
  LightningCLI's parser jsonargparse. Package markers and the `python -m` dispatcher are exempt. A plain-PyTorch
  helper there belongs in `vfmvae/`. A command in `lightning_modules/commands/` either runs Lightning (imports it
  or a `lightning_modules` module) or needs a layer that `vfmvae/commands/` may not import (`datamodules`,
  `callbacks`, `benchmarks`); a command that needs neither belongs in `vfmvae/commands/`.
- `callbacks/` never imports `lightning_modules`.
- No comparison with a diffusion family-name string (`"lightningdit"`, `"reg"`, ...) anywhere outside
  `vfmvae/dit/` and `tests/`, and no isinstance on a concrete network class outside `vfmvae/dit/`, except in
  `vfmvae/integrations/` (adapters that wrap one named network for an outside library, e.g. diffusers'
  `LightningDiTTransformer2DModel`, must check they were given that network). (docs/design.md, "Diffusion
  networks and the network interface")
- `DiffusionModule` assembles no loss terms itself (they come from `DiffusionObjective`).
- No code or config file over 400 lines outside `tests/`: Python, shell, YAML, TOML, the Makefile and `.ci/`
  scripts. Prose (`README.md`, `docs/*.md`) and data (JSON, fixtures) are not code and are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO_ROOT, repo_files

from vfmvae.dit import network_families

LIGHTNING = ("lightning", "pytorch_lightning", "lightning_fabric")
LIGHTNING_CLI = LIGHTNING + ("jsonargparse",)  # LightningCLI = Lightning + its argument parser
UPPER_LAYERS = ("datamodules", "lightning_modules", "callbacks", "scripts")
CONCRETE_NETWORKS = {"LightningDiT", "LightningDiTREPA", "SiTREG"}
MAX_LINES = 400
CODE_SUFFIXES = {".py", ".sh", ".yaml", ".yml", ".toml", ".cfg", ".ini"}


def _tree(path: Path) -> ast.AST:
    return ast.parse(path.read_text(), filename=str(path))


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every absolute import in ``path``, nested ones included."""
    found = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _offenders(root: Path, folder: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(root)}:{line} imports {name}"
        for path in sorted((root / folder).rglob("*.py"))
        for line, name in _imports(path)
        if name.split(".")[0] in forbidden
    ]


COMMAND_NEEDS = LIGHTNING_CLI + ("lightning_modules", "datamodules", "callbacks", "benchmarks")


def _not_lightning_facing(root: Path) -> list[str]:
    out = []
    for path in sorted((root / "lightning_modules").rglob("*.py")):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        needs = COMMAND_NEEDS if path.parent.name == "commands" else LIGHTNING_CLI
        if not any(name.split(".")[0] in needs for _, name in _imports(path)):
            out.append(str(path.relative_to(root)))
    return out


def _strings(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [s for e in node.elts for s in _strings(e)]
    return []


def family_branches(tree: ast.AST, families: set[str], isinstance_too: bool = True) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            named = [s for o in (node.left, *node.comparators) for s in _strings(o) if s in families]
            if named:
                found.append((node.lineno, f"compares with family name(s) {named}"))
        elif (
            isinstance_too
            and isinstance(node, ast.Call)
            and getattr(node.func, "id", None) in ("isinstance", "issubclass")
        ):
            names = {n.id for a in node.args[1:] for n in ast.walk(a) if isinstance(n, ast.Name)}
            names |= {n.attr for a in node.args[1:] for n in ast.walk(a) if isinstance(n, ast.Attribute)}
            if names & CONCRETE_NETWORKS:
                found.append((node.lineno, f"isinstance on {sorted(names & CONCRETE_NETWORKS)}"))
    return found


def _python_outside(*excluded: tuple[str, ...]) -> list[Path]:
    return [
        p
        for p in repo_files()
        if p.suffix == ".py" and not any(p.relative_to(REPO_ROOT).parts[: len(e)] == e for e in excluded)
    ]


# ------------------------------------------------------------------------------------------------ imports
def test_vfmvae_imports_neither_lightning_nor_an_upper_layer(repo_root):
    assert len(list((repo_root / "vfmvae").rglob("*.py"))) > 50
    offenders = _offenders(repo_root, "vfmvae", LIGHTNING + UPPER_LAYERS)
    assert not offenders, "vfmvae/ is plain PyTorch, below every other layer:\n" + "\n".join(offenders)


def test_every_lightning_modules_file_is_lightning_facing(repo_root):
    plain = _not_lightning_facing(repo_root)
    assert not plain, "these lightning_modules/ files do not import Lightning (move them into vfmvae/):\n" + "\n".join(
        plain
    )


def test_callbacks_never_import_lightning_modules(repo_root):
    offenders = _offenders(repo_root, "callbacks", ("lightning_modules",))
    assert not offenders, "callbacks/ must not depend on lightning_modules/:\n" + "\n".join(offenders)


def test_the_import_checks_see_a_violation(tmp_path):
    """The rules fire on files that break them (nested and `from` imports, `commands/` included)."""
    for folder in ("callbacks", "vfmvae", "lightning_modules/commands"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "callbacks" / "bad.py").write_text("def f():\n    from lightning_modules.tokenizer import X\n")
    (tmp_path / "vfmvae" / "bad.py").write_text("import torch\nimport lightning.pytorch as pl\nfrom . import x\n")
    (tmp_path / "lightning_modules" / "ok.py").write_text("import lightning.pytorch as pl\n")
    (tmp_path / "lightning_modules" / "commands" / "plain.py").write_text("import torch\n")
    (tmp_path / "lightning_modules" / "commands" / "data.py").write_text("def f():\n    import datamodules.crops\n")
    (tmp_path / "lightning_modules" / "plain.py").write_text("import datamodules.crops\n")
    (tmp_path / "lightning_modules" / "commands" / "__init__.py").write_text("")
    assert _offenders(tmp_path, "callbacks", ("lightning_modules",)) == [
        "callbacks/bad.py:2 imports lightning_modules.tokenizer"
    ]
    assert _offenders(tmp_path, "vfmvae", LIGHTNING + UPPER_LAYERS) == ["vfmvae/bad.py:2 imports lightning.pytorch"]
    assert _not_lightning_facing(tmp_path) == ["lightning_modules/commands/plain.py", "lightning_modules/plain.py"]


# --------------------------------------------------------------------------------- one network interface
def test_no_family_name_comparison_outside_vfmvae_dit():
    families = set(network_families())
    assert {"lightningdit", "reg"} <= families
    files = _python_outside(("vfmvae", "dit"), ("tests",))
    assert len(files) > 100
    offences = [
        f"{p.relative_to(REPO_ROOT)}:{line}: {what}"
        for p in files
        for line, what in family_branches(
            _tree(p), families, isinstance_too=p.relative_to(REPO_ROOT).parts[:2] != ("vfmvae", "integrations")
        )
    ]
    assert offences == [], "\n".join(offences)


def test_the_branch_scan_catches_what_it_forbids():
    """The detector on the patterns the redesign removed (so a count of 0 means something)."""
    code = (
        'if family == "reg": pass\n'
        'x = kind != "lightningdit"\n'
        'y = family in ("lightningdit", "reg")\n'
        "z = isinstance(net, SiTREG)\n"
        "w = isinstance(net, (vfmvae.dit.LightningDiT, int))\n"
        'ok = kind in ("vfm", "tokenizer") or family in FAMILIES or isinstance(net, DiffusionNetwork)\n'
    )
    assert [line for line, _ in family_branches(ast.parse(code), {"lightningdit", "reg"})] == [1, 2, 3, 4, 5]
    assert [line for line, _ in family_branches(ast.parse(code), {"lightningdit", "reg"}, False)] == [1, 2, 3]


def test_diffusion_module_only_orchestrates(repo_root):
    """The loss terms come from `DiffusionObjective`; the module names no transport loss and no network class."""
    tree = _tree(repo_root / "lightning_modules" / "diffusion.py")
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names
    }
    forbidden = {"LightningDiTLoss", "REGLoss", "projection_loss", "channel_cosine_loss", "mean_flat"}
    assert not names & (forbidden | CONCRETE_NETWORKS), sorted(names & (forbidden | CONCRETE_NETWORKS))
    assert "DiffusionObjective" in names


# ------------------------------------------------------------------------------------------- small files
def _is_code(path: Path) -> bool:
    rel = path.relative_to(REPO_ROOT)
    return rel.parts[0] != "tests" and (
        path.suffix in CODE_SUFFIXES or path.name == "Makefile" or rel.parts[0] == ".ci"
    )


def test_no_code_file_over_400_lines():
    files = [p for p in repo_files() if _is_code(p)]
    assert {"Makefile", "vfmvae/codec.py", "pyproject.toml"} <= {str(p.relative_to(REPO_ROOT)) for p in files}
    assert any(p.suffix == ".yaml" for p in files)
    long = {str(p.relative_to(REPO_ROOT)): n for p in files if (n := p.read_text().count("\n")) > MAX_LINES}
    assert not long, f"split these files (one concept per file, at most {MAX_LINES} lines): {long}"


@pytest.mark.parametrize(
    ("rel", "code"), [("vfmvae/x.py", True), ("Makefile", True), ("README.md", False), ("tests/test_x.py", False)]
)
def test_the_size_rule_covers_code_and_configs(rel, code):
    assert _is_code(REPO_ROOT / rel) is code
