"""Layers of the diffusion side (docs/design.md, "Layers of the code" and "Diffusion networks and the network
interface"), checked on the source: callbacks never import `lightning_modules`; nothing outside `vfmvae/dit/`
branches on a network family (no comparison with a family name, no isinstance on a concrete network class);
`DiffusionModule` assembles no loss terms itself; the diffusion files stay small.

The scan covers the code that drives diffusion networks: `lightning_modules/` (its commands included), `callbacks/`,
`benchmarks/` and `vfmvae/` outside `vfmvae/dit/`. Not scanned: `datamodules/` (it names *latent sampling
policies* "lightningdit"/"reg", which are not network families) and `vfmvae/integrations/` (adapters that
wrap one named family for an outside library, e.g. diffusers' `LightningDiTTransformer2DModel`, which checks
that it was given a LightningDiT).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from vfmvae.dit import network_families

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("lightning_modules", "callbacks", "benchmarks", "vfmvae")
CONCRETE_NETWORKS = {"LightningDiT", "LightningDiTREPA", "SiTREG"}


def _sources(*folders: str):
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if rel.parts[:2] in (("vfmvae", "dit"), ("vfmvae", "integrations")):
                continue
            yield rel, ast.parse(path.read_text(), filename=str(rel))


def _strings(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [s for e in node.elts for s in _strings(e)]
    return []


def _family_branches(tree: ast.AST, families: set[str]) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            named = [s for o in operands for s in _strings(o) if s in families]
            if named:
                found.append((node.lineno, f"compares with family name(s) {named}"))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("isinstance", "issubclass")
        ):
            names = {n.id for arg in node.args[1:] for n in ast.walk(arg) if isinstance(n, ast.Name)}
            names |= {n.attr for arg in node.args[1:] for n in ast.walk(arg) if isinstance(n, ast.Attribute)}
            if names & CONCRETE_NETWORKS:
                found.append((node.lineno, f"isinstance on {sorted(names & CONCRETE_NETWORKS)}"))
    return found


def test_no_family_branch_outside_vfmvae_dit():
    families = set(network_families())
    assert {"lightningdit", "reg"} <= families
    offences = [
        f"{rel}:{line}: {what}" for rel, tree in _sources(*SCANNED) for line, what in _family_branches(tree, families)
    ]
    assert offences == [], "\n".join(offences)


def test_the_scan_catches_what_it_forbids():
    """The detector itself on the patterns the redesign removed (so a count of 0 means something)."""
    families = {"lightningdit", "reg"}
    code = (
        'if family == "reg": pass\n'
        'x = kind != "lightningdit"\n'
        'y = family in ("lightningdit", "reg")\n'
        "z = isinstance(net, SiTREG)\n"
        "w = isinstance(net, (vfmvae.dit.LightningDiT, int))\n"
        'ok = kind in ("vfm", "tokenizer") or family in FAMILIES or isinstance(net, DiffusionNetwork)\n'
    )
    lines = [line for line, _ in _family_branches(ast.parse(code), families)]
    assert lines == [1, 2, 3, 4, 5]


def _imported_modules(tree: ast.AST) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_callbacks_never_import_lightning_modules():
    offences = [
        f"{rel}: imports {sorted(m for m in _imported_modules(tree) if m.split('.')[0] == 'lightning_modules')}"
        for rel, tree in _sources("callbacks")
        if any(m.split(".")[0] == "lightning_modules" for m in _imported_modules(tree))
    ]
    assert offences == [], "\n".join(offences)


@pytest.mark.parametrize("package", ["vfmvae/dit", "vfmvae/transport", "vfmvae/metrics"])
def test_numerics_packages_import_no_lightning(package):
    for path in sorted((ROOT / package).rglob("*.py")):
        mods = _imported_modules(ast.parse(path.read_text()))
        bad = sorted(m for m in mods if m.split(".")[0] in ("lightning", "pytorch_lightning", "lightning_modules"))
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_diffusion_module_only_orchestrates():
    """The loss terms come from `DiffusionObjective`; the module names no transport loss and no network class."""
    tree = ast.parse((ROOT / "lightning_modules" / "diffusion.py").read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names
    }
    forbidden = {"LightningDiTLoss", "REGLoss", "projection_loss", "channel_cosine_loss", "mean_flat"}
    assert not names & (forbidden | CONCRETE_NETWORKS), sorted(names & (forbidden | CONCRETE_NETWORKS))
    assert "DiffusionObjective" in names


DIFFUSION_FILES = [
    "lightning_modules/diffusion.py",
    "lightning_modules/parallel.py",
    "lightning_modules/sampling.py",
    "callbacks/joint_alignment.py",
    "callbacks/sample_grid.py",
    "callbacks/sample_writer.py",
    "callbacks/sampler_state.py",
    "callbacks/se_cknna_probe.py",
    "callbacks/se_cknna_probe_config.py",
    "lightning_modules/commands/sample.py",
    "vfmvae/commands/se_cknna.py",
    "vfmvae/metrics/se_cknna.py",
    "vfmvae/metrics/se_probe.py",
    "vfmvae/metrics/se_models.py",
    "vfmvae/metrics/se_transforms.py",
]


@pytest.mark.parametrize(
    "rel", DIFFUSION_FILES + [str(p.relative_to(ROOT)) for p in (ROOT / "vfmvae").glob("[dt]*/*.py")]
)
def test_diffusion_files_stay_small(rel):
    lines = (ROOT / rel).read_text().count("\n")
    assert lines <= 400, f"{rel} has {lines} lines (keep files under ~400: one concept per file)"
