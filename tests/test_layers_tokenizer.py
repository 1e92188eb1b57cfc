"""The layers of the code are true (docs/design.md, "Layers of the code"), checked on the import statements.

- `vfmvae/` is plain PyTorch: it imports neither Lightning nor an upper layer (`datamodules`, `lightning_modules`,
  `callbacks`, `scripts`);
- `lightning_modules/` holds Lightning-facing modules only: each imports Lightning (or, for the command line,
  LightningCLI's parser jsonargparse); a plain-PyTorch helper there belongs in `vfmvae/`;
- `callbacks/` never imports `lightning_modules` (a callback works with any LightningModule that has the
  attributes it documents).

Imports are read with `ast` (nested ones included), so the test costs no import time.
"""

from __future__ import annotations

import ast
from pathlib import Path

LIGHTNING = ("lightning", "pytorch_lightning", "lightning_fabric")
LIGHTNING_CLI = LIGHTNING + ("jsonargparse",)  # LightningCLI = Lightning + its argument parser
UPPER_LAYERS = ("datamodules", "lightning_modules", "callbacks", "scripts")


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every absolute import in ``path`` (relative imports stay inside a package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
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


def test_vfmvae_imports_neither_lightning_nor_an_upper_layer(repo_root):
    offenders = _offenders(repo_root, "vfmvae", LIGHTNING + UPPER_LAYERS)
    assert not offenders, "vfmvae/ is plain PyTorch, below every other layer:\n" + "\n".join(offenders)


def test_every_lightning_module_file_is_lightning_facing(repo_root):
    plain = []
    for path in sorted((repo_root / "lightning_modules").glob("*.py")):
        if path.name == "__init__.py" or path.name == "__main__.py":  # package marker / `python -m` entry point
            continue
        if not any(name.split(".")[0] in LIGHTNING_CLI for _, name in _imports(path)):
            plain.append(str(path.relative_to(repo_root)))
    assert not plain, "these lightning_modules/ files do not import Lightning (move them into vfmvae/):\n" + "\n".join(
        plain
    )


def test_callbacks_never_import_lightning_modules(repo_root):
    offenders = _offenders(repo_root, "callbacks", ("lightning_modules",))
    assert not offenders, "callbacks/ must not depend on lightning_modules/:\n" + "\n".join(offenders)


def test_the_checks_see_a_violation(tmp_path):
    """The rules fire on a file that breaks them (nested and `from` imports included)."""
    (tmp_path / "callbacks").mkdir()
    (tmp_path / "callbacks" / "bad.py").write_text("def f():\n    from lightning_modules.tokenizer import X\n")
    (tmp_path / "vfmvae").mkdir()
    (tmp_path / "vfmvae" / "bad.py").write_text("import torch\nimport lightning.pytorch as pl\nfrom . import x\n")
    assert _offenders(tmp_path, "callbacks", ("lightning_modules",)) == [
        "callbacks/bad.py:2 imports lightning_modules.tokenizer"
    ]
    assert _offenders(tmp_path, "vfmvae", LIGHTNING + UPPER_LAYERS) == ["vfmvae/bad.py:2 imports lightning.pytorch"]
