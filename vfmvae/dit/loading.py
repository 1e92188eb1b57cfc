"""The network to sample from: a `DiffusionModule` training checkpoint (EMA or live weights) or a released
official file (docs/design.md, "Checkpoints, resume and provenance"). Plain PyTorch; used by
`vfmvae sample` and `vfmvae se-cknna`.

* Training checkpoint (a Lightning ``.ckpt``): the network is rebuilt from the saved hyper-parameters
  (`vfmvae.dit.registry.build_from_hparams`) and loaded with the EMA callback's averaged weights
  (``weights="ema"``) or the live ones (``"raw"``).
* Export folder (`vfmvae.dit.export`, ``vfmvae export-dit``): the network rebuilt from its build spec, its
  weights hash checked; its provenance (latent statistics, tokenizer hash) is the checkpoint's.
* Official release file (``family`` given): converted by the family's ``from_official`` with the paper run's
  constructor kwargs unless ``official_kwargs`` (a JSON/YAML file) gives others; its EMA entry is used.

Both are read without running code from the file (`vfmvae.dit.convert.load_checkpoint_file`: ``weights_only``
with ``argparse.Namespace`` allowed, or safetensors); our checkpoints hold only tensors, containers, numbers
and strings. A file that needs full unpickling is refused unless the caller trusts it (``--trust-pickle``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vfmvae.dit.convert import load_checkpoint_file
from vfmvae.dit.registry import build_from_hparams, load_official_network

__all__ = ["ema_state", "load_sampling_network", "read_kwargs_file"]


def ema_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The EMA callback's averaged tensors of a Lightning checkpoint (``{"net.<name>": tensor}``), or None."""
    for key, state in ckpt.get("callbacks", {}).items():
        if key.startswith("EMACallback") and isinstance(state, dict) and state.get("ema"):
            return {**state["ema"].get("buffers", {}), **state["ema"]["params"]}
    return None


def read_kwargs_file(path: str | Path) -> dict[str, Any]:
    """Constructor kwargs from a ``.json`` or YAML file."""
    text = Path(path).read_text()
    if str(path).endswith(".json"):
        return json.loads(text)
    import yaml

    return yaml.safe_load(text)


def _is_training_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and "hyper_parameters" in obj and "state_dict" in obj


def load_sampling_network(
    path: str | Path, family: str | None = None, weights: str = "ema", official_kwargs: str | Path | None = None
) -> tuple[nn.Module, str, dict[str, Any], dict[str, Any]]:
    """``(net in eval(), family name, record, training provenance)`` (see the module docstring)."""
    p = Path(path)
    if p.is_dir():
        from vfmvae.dit.export import DiffusionNetworkExport

        export = DiffusionNetworkExport.from_pretrained(p)
        name = export.build["network"]
        if family is not None and family != name:
            raise ValueError(f"--model {family} but the export holds a {name} network")
        record = {
            "source": str(p),
            "kind": "export",
            "weights": export.weights,
            "sha256": export.record()["weights_sha256"],
        }
        return export.network, name, record, dict(export.provenance)
    if not p.is_file():
        raise FileNotFoundError(f"diffusion checkpoint not found: {p}")
    if weights not in ("ema", "raw"):
        raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
    ckpt = load_checkpoint_file(p, what="diffusion checkpoint")
    if family is None and not _is_training_checkpoint(ckpt):
        raise ValueError(
            f"{p} is not a DiffusionModule checkpoint; say which official network it is with --model "
            "(e.g. lightningdit or reg)"
        )
    if _is_training_checkpoint(ckpt):
        return _from_training(p, ckpt, family, weights)
    kwargs = None if official_kwargs is None else read_kwargs_file(official_kwargs)
    net = load_official_network(family, ckpt, kwargs)
    used = kwargs if kwargs is not None else dict(_official_defaults(family))
    return net.eval(), family, {"source": str(p), "kind": "official", "weights": "ema", "kwargs": used}, {}


def _official_defaults(family: str) -> dict[str, Any]:
    from vfmvae.dit.registry import network_family

    return dict(network_family(family).official_kwargs or {})


def _from_training(p: Path, ckpt: dict[str, Any], family: str | None, weights: str):
    hp = ckpt["hyper_parameters"]
    name = hp["network"]
    if family is not None and family != name:
        raise ValueError(f"--model {family} but the checkpoint holds a {name} network")
    net = build_from_hparams(hp)
    raw = {k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    state, used = raw, "raw"
    if weights == "ema":
        ema = ema_state(ckpt)
        if ema is None:
            raise KeyError(f"{p} has no EMA state (EMACallback); pass --weights raw to sample the live weights")
        # EMA also tracks non-persistent buffers (position/RoPE tables): keep state_dict keys only.
        averaged = {k[4:]: v for k, v in ema.items() if k.startswith("net.") and k[4:] in raw}
        state, used = {**raw, **averaged}, "ema"
    net.load_state_dict(state, strict=True)
    provenance = ckpt.get("diffusion", {}).get("provenance", {})
    record = {"source": str(p), "kind": "training", "weights": used, "global_step": ckpt.get("global_step")}
    return net.eval(), name, record, provenance
