"""Named diffusion-network families and how to build one (docs/design.md, "Diffusion networks and the
network interface").

A family is a name (the ``network:`` of a run config and of its checkpoint's hyper-parameters), its
presets, a builder, and optionally the converter of the official release files. LightningDiT and REG SiT
register themselves in their own files; a new network registers in its own file too, so that
``DiffusionModule(network="my-net")``, ``vfmvae sample`` and ``vfmvae se-cknna`` find it without
edits. Every built network implements `vfmvae.dit.interface.DiffusionNetwork`.

Builders are called as ``build(preset, overrides, activation_checkpointing=..., **options)`` where
``overrides`` are shape fields of the preset (lists already turned into tuples) and ``options`` are
family options (LightningDiT's REPA projector: ``repa_encoder_depth``, ``repa_projector_dim``,
``repa_z_dim``); a builder rejects options it does not know with a clear error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from vfmvae.dit.interface import check_network

__all__ = [
    "NetworkFamily",
    "register_network",
    "network_family",
    "network_families",
    "build_diffusion_network",
    "build_from_hparams",
    "load_official_network",
]


@dataclass(frozen=True)
class NetworkFamily:
    """One registered family. ``official_kwargs``: the paper runs' constructor kwargs of released files."""

    name: str
    presets: Mapping[str, Any]
    default_preset: str
    build: Callable[..., nn.Module]
    from_official: Callable[[Any, Mapping[str, Any]], nn.Module] | None = None
    official_kwargs: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.default_preset not in self.presets:
            raise ValueError(f"family {self.name!r}: default preset {self.default_preset!r} is not among its presets")


_FAMILIES: dict[str, NetworkFamily] = {}


def register_network(family: NetworkFamily, *, replace: bool = False) -> NetworkFamily:
    """Add ``family`` to the registry (``replace=True`` to redefine a name, e.g. in tests)."""
    if family.name in _FAMILIES and not replace and _FAMILIES[family.name] is not family:
        raise ValueError(f"a diffusion network family named {family.name!r} is already registered")
    _FAMILIES[family.name] = family
    return family


def network_families() -> tuple[str, ...]:
    """Names of the registered families (``("lightningdit", "reg", ...)``)."""
    _load_builtin()
    return tuple(_FAMILIES)


def network_family(name: str) -> NetworkFamily:
    _load_builtin()
    if name not in _FAMILIES:
        raise ValueError(f"unknown diffusion network {name!r}; choose one of {tuple(_FAMILIES)}")
    return _FAMILIES[name]


def build_diffusion_network(
    family: str,
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    activation_checkpointing: bool = False,
    **options: Any,
) -> nn.Module:
    """The network of a run: ``family`` a registered name, ``preset`` one of its presets (default: the
    paper's), ``overrides`` shape fields (e.g. ``{"input_size": 4}``; YAML lists become tuples)."""
    fam = network_family(family)
    preset = preset or fam.default_preset
    if preset not in fam.presets:
        raise ValueError(f"unknown {family} preset {preset!r}; choose one of {sorted(fam.presets)}")
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(overrides or {}).items()}
    net = fam.build(preset, overrides, activation_checkpointing=activation_checkpointing, **options)
    return check_network(net, f"the {family!r} builder's network")


def build_from_hparams(hp: Mapping[str, Any], *, activation_checkpointing: bool = False) -> nn.Module:
    """Rebuild the network of a `DiffusionModule` from its saved hyper-parameters (checkpoints)."""
    options = {}
    if hp.get("repa_encoder_depth") is not None:
        options = {
            "repa_encoder_depth": hp["repa_encoder_depth"],
            "repa_projector_dim": hp.get("repa_projector_dim", 2048),
            "repa_z_dim": hp.get("repa_z_dim", 768),
        }
    return build_diffusion_network(
        hp["network"],
        hp.get("preset"),
        hp.get("network_overrides"),
        activation_checkpointing=activation_checkpointing,
        **options,
    )


def load_official_network(family: str, checkpoint: Any, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """A released official checkpoint (path or loaded dict) of ``family``; ``kwargs`` default to the paper's."""
    fam = network_family(family)
    if fam.from_official is None:
        raise ValueError(f"the {family!r} family has no converter for official release files")
    kwargs = fam.official_kwargs if kwargs is None else kwargs
    if kwargs is None:
        raise ValueError(f"official {family!r} files need constructor kwargs (--official-kwargs JSON/YAML)")
    return check_network(fam.from_official(checkpoint, kwargs), f"the official {family!r} network")


def _load_builtin() -> None:
    """Import the built-in families (they register on import)."""
    import vfmvae.dit.lightningdit_repa  # noqa: F401
    import vfmvae.dit.sit_reg_family  # noqa: F401
    import vfmvae.dit.text_dit  # noqa: F401
