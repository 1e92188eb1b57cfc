"""Training-state helpers of `TokenizerModule`: frozen-network keys, stage hand-off, RNG stream, grad sync.

- **Frozen networks are not stored in Lightning checkpoints.** The SigLIP2-L VFM (1.2 GB), the
  discriminator's DINO ViT-S and LPIPS' VGG16 are rebuilt from their files (or, for random test /
  demo networks, from a fixed seed) every run. `drop_frozen_keys` removes them before saving and
  records a sha256 per network; `fill_frozen_keys` puts the current tensors back before loading,
  so `load_state_dict` stays strict for every *other* key, and a changed frozen network is an error.
- **Stage hand-off** (`load_previous_stage`): weights, EMA and the global image counter of the
  previous stage's checkpoint; fresh optimisers unless asked otherwise (spec §5: fresh Adam per
  stage). Missing and unexpected keys are reported; those explained by the stage plan (the VF
  projection dropped after stage 1, the PatchGAN new in stage 3) are listed as such, anything
  else is an error unless `strict=False`.
- **RNG stream**: the step's randomness (posterior sampling, DiffAugment, D crops) runs on a
  generator state owned by the module and saved in checkpoints, so a resumed run draws exactly
  what an uninterrupted one would, whatever the data loaders did with the global RNG meanwhile.
- **Gradient sync**: under DDP the module averages the gradients of exactly the stepped
  parameters itself (flat all-reduce, as the official loop), see `TokenizerModule` docs.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vfmvae.provenance import state_dict_sha256

log = logging.getLogger(__name__)

# Keys (in the LightningModule's state dict) of the frozen networks that checkpoints leave out.
FROZEN_PREFIXES: dict[str, str] = {
    "vfm": "tokenizer.vfm.",
    "dino": "projected_d.dino.",
    "lpips": "lpips.",
}
# Differences between consecutive stages that the stage plan explains.
EXPLAINED_MISSING = {r"^patchgan\.": "PatchGAN discriminator is new in stage 3"}
EXPLAINED_UNEXPECTED = {
    r"^tokenizer\.head\.vf_projection\.": "VF projection (linear_proj) exists only in stages 0-1 (official strict=False drop)",
    r"^patchgan\.": "PatchGAN discriminator is not used in this stage",
}


def frozen_state(module: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in module.state_dict().items() if k.startswith(prefix)}


def drop_frozen_keys(state_dict: dict[str, torch.Tensor], hashes: Mapping[str, str]) -> dict[str, Any]:
    """Remove frozen-network tensors in place; returns the record stored next to them."""
    record = {}
    for name, prefix in FROZEN_PREFIXES.items():
        keys = [k for k in state_dict if k.startswith(prefix)]
        if keys:
            for k in keys:
                del state_dict[k]
            record[name] = {"prefix": prefix, "num_tensors": len(keys), "sha256": hashes.get(name)}
    return record


def fill_frozen_keys(
    state_dict: dict[str, torch.Tensor], module: nn.Module, record: Mapping[str, Any] | None, hashes: Mapping[str, str]
) -> None:
    """Put the current frozen-network tensors into a loaded state dict (in place), checking their hash."""
    current = module.state_dict()
    for name, prefix in FROZEN_PREFIXES.items():
        keys = [k for k in current if k.startswith(prefix)]
        if not keys or any(k in state_dict for k in keys):
            continue  # an old-style checkpoint that still holds the tensors loads them as they are
        saved = (record or {}).get(name, {}).get("sha256")
        if saved is not None and hashes.get(name) is not None and saved != hashes[name]:
            raise ValueError(
                f"the frozen {name} network differs from the one this checkpoint was trained with "
                f"(sha256 {hashes[name][:12]} vs {saved[:12]}): point the run at the same weights file"
            )
        for k in keys:
            state_dict[k] = current[k]


def frozen_hashes(module: nn.Module) -> dict[str, str]:
    """sha256 of each frozen network present in `module` (computed once per run)."""
    out = {}
    for name, prefix in FROZEN_PREFIXES.items():
        state = frozen_state(module, prefix)
        if state:
            out[name] = state_dict_sha256(state)
    return out


def _explain(key: str, table: Mapping[str, str]) -> str | None:
    return next((why for pattern, why in table.items() if re.search(pattern, key)), None)


@dataclass
class HandoffReport:
    """Outcome of loading the previous stage: keys that did not match, explained or not."""

    source: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    explained: dict[str, str] = field(default_factory=dict)
    ema_initialised_from_weights: list[str] = field(default_factory=list)
    ema_dropped: list[str] = field(default_factory=list)
    global_nimg: int = 0
    previous_stage: int | None = None
    optimizers_kept: bool = False

    @property
    def unexplained(self) -> list[str]:
        return [k for k in self.missing + self.unexpected if k not in self.explained]

    def summary(self) -> str:
        lines = [f"stage hand-off from {self.source} (stage {self.previous_stage}, global images {self.global_nimg})"]
        for title, keys in (("missing", self.missing), ("unexpected", self.unexpected)):
            for k in keys:
                lines.append(
                    f"  {title}: {k}" + (f"  [{self.explained[k]}]" if k in self.explained else "  [UNEXPLAINED]")
                )
        if self.ema_initialised_from_weights:
            lines.append(f"  EMA initialised from the weights for {len(self.ema_initialised_from_weights)} tensors")
        if self.ema_dropped:
            lines.append(
                f"  EMA values dropped for {len(self.ema_dropped)} tensors no longer trained (raw weights kept)"
            )
        lines.append(f"  optimisers: {'kept' if self.optimizers_kept else 'fresh (paper)'}")
        return "\n".join(lines)


def _collapse(keys: Iterable[str], depth: int = 4) -> list[str]:
    """Group keys by their first `depth` name parts so a report stays readable."""
    return sorted({".".join(k.split(".")[:depth]) + (".*" if k.count(".") >= depth else "") for k in keys})


def compare_state_dicts(own: Iterable[str], loaded: Iterable[str], source: str) -> HandoffReport:
    own, loaded = set(own), set(loaded)
    report = HandoffReport(source=source, missing=_collapse(own - loaded), unexpected=_collapse(loaded - own))
    for key in report.missing:
        why = _explain(key, EXPLAINED_MISSING)
        if why:
            report.explained[key] = why
    for key in report.unexpected:
        why = _explain(key, EXPLAINED_UNEXPECTED)
        if why:
            report.explained[key] = why
    return report


def merge_ema_state(saved: Mapping[str, Any], current: Mapping[str, Any], report: HandoffReport) -> dict[str, Any]:
    """EMA state for this stage's tracked tensors from the previous stage's EMA, name by name.

    Tracked names missing from the old EMA keep the current (weight-initialised) shadow; old names
    no longer tracked are dropped (the parts a stage freezes keep their raw weights, which is where
    the official G_ema of frozen parts converges to within the stage).
    """
    merged = {k: v for k, v in current.items() if k not in ("params", "buffers")}
    merged["num_updates"] = int(saved.get("num_updates", 0))
    merged["nimg"] = int(saved.get("nimg", 0))
    for kind in ("params", "buffers"):
        old, new = saved.get(kind, {}), current[kind]
        merged[kind] = {
            n: (old[n] if n in old and tuple(old[n].shape) == tuple(t.shape) else t) for n, t in new.items()
        }
        report.ema_initialised_from_weights += [n for n in new if n not in old]
        report.ema_dropped += [n for n in old if n not in new]
    return merged


class RNGStream:
    """A private, checkpointable torch RNG stream (CPU + the current CUDA device) for training steps."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        gen = torch.Generator()
        gen.manual_seed(self.seed)
        self.cpu_state = gen.get_state()
        self.cuda_state: torch.Tensor | None = None

    @contextlib.contextmanager
    def activate(self, device: torch.device) -> Iterator[None]:
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu_state)
            if devices:
                if self.cuda_state is None:
                    torch.cuda.manual_seed(self.seed)
                else:
                    torch.cuda.set_rng_state(self.cuda_state, device)
            yield
            self.cpu_state = torch.get_rng_state()
            if devices:
                self.cuda_state = torch.cuda.get_rng_state(device)

    def state_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "cpu": self.cpu_state.clone(),
            "cuda": None if self.cuda_state is None else self.cuda_state.clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.seed = int(state["seed"])
        self.cpu_state = state["cpu"].clone()
        self.cuda_state = None if state.get("cuda") is None else state["cuda"].clone()


__all__ = [
    "FROZEN_PREFIXES",
    "HandoffReport",
    "RNGStream",
    "compare_state_dicts",
    "drop_frozen_keys",
    "fill_frozen_keys",
    "frozen_hashes",
    "merge_ema_state",
]
