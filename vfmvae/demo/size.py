"""The demo's sizes as data: ``configs/demo/runner.yaml`` and the run YAMLs, with a size's overlays stacked last.

A size is ``demo`` (the files in ``configs/demo/`` as they are) or the name of a folder ``configs/demo/size_<name>/``
whose files are stacked on them: ``runner.yaml`` on the runner's numbers (keys replaced), ``<run>.yaml`` on that
training run's YAMLs (a further ``--config``). Nothing here rewrites a YAML.

The tokenizer's frozen VFM family is part of the name: ``<size>+<family>`` (``demo+dinov2``, ``ci+mae``;
``make demo VFM=dinov2``) stacks ``configs/demo/vfm_<family>.yaml`` last on the two tokenizer runs, whose
tiny random VFM it replaces; a plain ``<size>`` is the default family, SigLIP2 (the paper's encoder).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

NUM_CLASSES = 15  # the embedded demo photographs' classes (datamodules.demo_data.DEMO_CLASSES)
# Each training run's YAMLs, relative to the repository's configs/ folder, in stacking order.
RUNS: dict[str, tuple[str, ...]] = {
    "tokenizer_stage0": ("tokenizer/demo.yaml", "demo/tokenizer_stage0.yaml"),
    "tokenizer_stage2": ("demo/tokenizer_stage2.yaml",),
    "reg": ("demo/reg.yaml",),
    "t2i": ("demo/t2i.yaml",),  # text-to-image phase (docs/text_to_image.md)
}
DEFAULT_VFM = "siglip2"  # the paper's tokenizer encoder; no overlay
FAMILY_SEPARATOR = "+"
FAMILY_RUNS = ("tokenizer_stage0", "tokenizer_stage2")  # the runs that build the tokenizer's VFM


@dataclass(frozen=True)
class DemoSize:
    """The numbers of the phases that are not a training run (``configs/demo/runner.yaml`` documents them)."""

    name: str
    train_per_class: int
    val_per_class: int
    source_resolution: int
    resolution: int
    recon_images: int
    sample_seeds: int
    sample_steps: int
    cfg_scale: float
    budget_s: float
    enforce_checks: bool
    vfm_family: str = DEFAULT_VFM  # from the name (``<size>+<family>``), never from runner.yaml

    def __post_init__(self) -> None:
        if min(self.train_per_class, self.val_per_class, self.sample_steps) < 1:
            raise ValueError(f"demo size {self.name!r}: images per class and sampler steps must be >= 1")
        if self.sample_seeds < 2:
            raise ValueError("sample_seeds must be >= 2: the class check compares classes against their spread")
        if not 1 <= self.recon_images <= self.val_per_class * NUM_CLASSES:
            raise ValueError(f"recon_images {self.recon_images} must lie in [1, {self.val_per_class * NUM_CLASSES}]")


def vfm_families(configs: Path) -> list[str]:
    """The default family and every ``configs/demo/vfm_<family>.yaml`` overlay."""
    overlays = sorted(p.stem.removeprefix("vfm_") for p in (configs / "demo").glob("vfm_*.yaml"))
    return [DEFAULT_VFM] + [f for f in overlays if f != DEFAULT_VFM]


def _sizes(configs: Path) -> list[str]:
    return ["demo"] + sorted(p.name.removeprefix("size_") for p in (configs / "demo").glob("size_*") if p.is_dir())


def available_sizes(configs: Path) -> list[str]:
    """``demo``, every ``configs/demo/size_<name>/`` folder, and each of them as ``<size>+<family>``."""
    sizes = _sizes(configs)
    return sizes + [f"{s}{FAMILY_SEPARATOR}{f}" for s in sizes for f in vfm_families(configs)]


def split_name(configs: Path, name: str) -> tuple[str, str]:
    """``"ci+dinov2"`` -> ``("ci", "dinov2")``; ``"ci"`` -> ``("ci", "siglip2")``; unknown parts are an error."""
    size, _, family = name.partition(FAMILY_SEPARATOR)
    family = family or DEFAULT_VFM
    if size not in _sizes(configs):
        raise ValueError(f"unknown demo size {size!r}; choose one of {_sizes(configs)}")
    if family not in vfm_families(configs):
        raise ValueError(
            f"unknown demo VFM family {family!r}; choose one of {vfm_families(configs)} "
            f"(make demo VFM=<family>: configs/demo/vfm_<family>.yaml)"
        )
    return size, family


def _overlay(configs: Path, size: str, filename: str) -> Path | None:
    size = size.partition(FAMILY_SEPARATOR)[0]
    path = configs / "demo" / f"size_{size}" / filename
    return path if size != "demo" and path.is_file() else None


def _family_overlay(configs: Path, name: str, run: str) -> Path | None:
    family = split_name(configs, name)[1]
    return configs / "demo" / f"vfm_{family}.yaml" if family != DEFAULT_VFM and run in FAMILY_RUNS else None


def load_size(configs: Path, name: str) -> DemoSize:
    """The runner's numbers of size ``name`` (``runner.yaml`` with the size's ``runner.yaml`` keys on top)."""
    family = split_name(configs, name)[1]
    values = yaml.safe_load((configs / "demo" / "runner.yaml").read_text())
    overlay = _overlay(configs, name, "runner.yaml")
    if overlay is not None:
        values.update(yaml.safe_load(overlay.read_text()) or {})
    known = {f.name for f in fields(DemoSize)} - {"name", "vfm_family"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"demo size {name!r}: unknown runner keys {unknown}; known: {sorted(known)}")
    return DemoSize(name=name, vfm_family=family, **values)


def run_configs(configs: Path, size: str, run: str) -> list[Path]:
    """The YAMLs of training run ``run`` at size ``size``, in ``--config`` order (the family's overlay last)."""
    files = [configs / f for f in RUNS[run]]
    overlays = (_overlay(configs, size, f"{run}.yaml"), _family_overlay(configs, size, run))
    return files + [p for p in overlays if p is not None]


def size_fingerprint(configs: Path, size: str) -> str:
    """A hash of every file that sets the size's numbers: a demo folder is only reused by the same settings."""
    files = [configs / "demo" / "runner.yaml"] + [p for run in RUNS for p in run_configs(configs, size, run)]
    overlay = _overlay(configs, size, "runner.yaml")
    digest = hashlib.sha256()
    for path in files + ([overlay] if overlay is not None else []):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


__all__ = [
    "DEFAULT_VFM",
    "NUM_CLASSES",
    "RUNS",
    "DemoSize",
    "available_sizes",
    "load_size",
    "run_configs",
    "size_fingerprint",
    "split_name",
    "vfm_families",
]
