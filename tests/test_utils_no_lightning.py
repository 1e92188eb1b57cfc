"""style.md principle 1: nothing under vfmvae/ imports lightning (numerics are plain PyTorch)."""

from __future__ import annotations

import ast


def test_vfmvae_never_imports_lightning(repo_root):
    offenders = []
    for path in sorted((repo_root / "vfmvae").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in ("lightning", "pytorch_lightning", "lightning_fabric"):
                    offenders.append(f"{path.relative_to(repo_root)}:{node.lineno} imports {name}")
    assert not offenders, "vfmvae/ must stay free of Lightning:\n" + "\n".join(offenders)
