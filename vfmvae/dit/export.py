"""Diffusion-network export folders, a Hugging Face model repository each (docs/export.md).

`DiffusionNetworkExport` is a ``huggingface_hub.ModelHubMixin`` around any registered network
(`vfmvae.dit.registry`): ``save_pretrained`` writes

    <dir>/config.json          format tag, the network's build spec (family, preset, shape overrides, options:
                               exactly what `build_from_hparams` reads), weights hash, provenance, metrics
    <dir>/model.safetensors    the network's weights (the EMA weights of a training checkpoint by default)
    <dir>/README.md            the model card: what it is, the paper, images seen, metrics, provenance hashes

and ``from_pretrained`` rebuilds the network from the spec and checks the weights hash, from the folder or
from a Hub repository id (local cache only unless ``local_files_only=False``: `vfmvae.utils.hub`).
``push_to_hub`` is the mixin's. The provenance of a training checkpoint (`from_checkpoint`) carries the latent
statistics and the tokenizer hash of its latent cache, so the folder alone is enough to sample
(`vfmvae.tokenizer.loading.load_latent_stats(None, export.provenance["latent_stats"])`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelHubMixin
from torch import nn

from vfmvae.dit.registry import build_from_hparams
from vfmvae.provenance import check_sha256, state_dict_sha256, to_jsonable
from vfmvae.utils.hub import PAPER, metrics_table, model_card, provenance_hashes, resolve_pretrained

__all__ = ["EXPORT_FORMAT", "DiffusionNetworkExport", "load_diffusion_network"]

EXPORT_FORMAT = "vfmvae-dit/1"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
# The hyper-parameters of a `DiffusionModule` that `build_from_hparams` reads: the network's build spec.
BUILD_KEYS = ("network", "preset", "network_overrides", "repa_encoder_depth", "repa_projector_dim", "repa_z_dim")
TAGS = ["vfm-vae", "latent-diffusion", "diffusion-transformer", "class-conditional-image-generation"]


class DiffusionNetworkExport(ModelHubMixin, library_name="vfmvae", paper_url=PAPER["url"], tags=TAGS):
    """``network`` (built from ``build``, a `DiffusionModule`'s hyper-parameters subset) with its records.

    ``weights``: "ema" or "raw"; ``provenance``: JSON-able facts (checkpoint, steps, images seen, the latent
    cache's tokenizer hash and statistics); ``metrics``: ``{name: value}`` or evaluation records.
    """

    def __init__(
        self,
        network: nn.Module,
        build: Mapping[str, Any],
        *,
        weights: str = "ema",
        provenance: Mapping[str, Any] | None = None,
        metrics: Any = None,
    ) -> None:
        if "network" not in build:
            raise ValueError("DiffusionNetworkExport: build needs at least 'network' (the registered family name)")
        if weights not in ("ema", "raw"):
            raise ValueError(f"DiffusionNetworkExport: weights must be 'ema' or 'raw', got {weights!r}")
        self.network = network
        self.build = {k: to_jsonable(build[k]) for k in BUILD_KEYS if build.get(k) is not None}
        self.weights = weights
        self.provenance = to_jsonable(dict(provenance or {}))
        self.metrics = metrics_table(metrics)

    # ------------------------------------------------------------------ records
    def record(self) -> dict[str, Any]:
        """The ``config.json`` record (hashes included; nothing written)."""
        return {
            "format": EXPORT_FORMAT,
            "library_name": "vfmvae",
            "paper": f"arXiv:{PAPER['arxiv']}",
            "build": self.build,
            "network_config": to_jsonable(getattr(self.network, "config", None)),
            "latent_shape": list(getattr(self.network, "latent_shape", ()) or ()),
            "parameters": sum(p.numel() for p in self.network.parameters()),
            "weights": self.weights,
            "weights_sha256": state_dict_sha256(_state(self.network)),
            "provenance": self.provenance,
            "metrics": self.metrics,
        }

    def generate_model_card(self, *args: Any, **kwargs: Any):
        return diffusion_model_card(self.record())

    # ------------------------------------------------------------------ the mixin's hooks
    def _save_pretrained(self, save_directory: Path) -> None:
        from safetensors.torch import save

        from vfmvae.utils.checkpoint_io import atomic_write

        record = self.record()
        state = _state(self.network)
        data = save(state, metadata={"weights_sha256": record["weights_sha256"]})
        atomic_write(save_directory / WEIGHTS_NAME, lambda f: f.write(data))
        card = str(diffusion_model_card(record))
        atomic_write(save_directory / CARD_NAME, lambda f: f.write(card.encode()))
        atomic_write(save_directory / CONFIG_NAME, lambda f: f.write(json.dumps(record, indent=2).encode()))

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> dict[str, Any]:
        """The mixin's ``save_pretrained`` (``push_to_hub=True, repo_id=...`` uploads too); the record."""
        kwargs.pop("config", None)  # config.json is the export record, written by `_save_pretrained`
        super().save_pretrained(save_directory, **kwargs)
        return json.loads((Path(save_directory) / CONFIG_NAME).read_text())

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        map_location: str = "cpu",
        local_files_only: bool = True,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        force_download: bool = False,
    ) -> DiffusionNetworkExport:
        """An export folder, or a Hub repository id (local cache only unless ``local_files_only=False``)."""
        folder = resolve_pretrained(
            pretrained_model_name_or_path,
            what="diffusion network export",
            allow_patterns=["*.json", "*.safetensors", "*.md"],
            local_files_only=local_files_only,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            force_download=force_download,
        )
        return super().from_pretrained(folder, local_files_only=True, map_location=map_location)

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | os.PathLike | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        config: Mapping[str, Any] | None = None,
        build: Any = None,  # the mixin also passes the config.json fields named like __init__ arguments;
        weights: Any = None,  # the record in `config` is read instead
        provenance: Any = None,
        metrics: Any = None,
        map_location: str = "cpu",
    ) -> DiffusionNetworkExport:
        from safetensors.torch import load_file

        folder = Path(model_id)
        record = dict(config or json.loads((folder / CONFIG_NAME).read_text()))
        if record.get("format") != EXPORT_FORMAT:
            raise ValueError(
                f"{folder / CONFIG_NAME}: not a diffusion network export (format {record.get('format')!r}, "
                f"expected {EXPORT_FORMAT!r})"
            )
        state = load_file(str(folder / WEIGHTS_NAME), device=str(map_location))
        mismatch = (
            f"{folder / WEIGHTS_NAME}: weights hash {{got}} != recorded {{expected}} (file corrupted or replaced)"
        )
        check_sha256(state, record["weights_sha256"], mismatch)
        network = build_from_hparams(record["build"])
        network.load_state_dict(state, strict=True)
        export = cls(
            network.eval(),
            record["build"],
            weights=record.get("weights", "ema"),
            provenance=record.get("provenance"),
        )
        export.metrics = dict(record.get("metrics") or {})
        return export

    # ------------------------------------------------------------------ from a training checkpoint
    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, weights: str = "ema", metrics: Any = None):
        """A `DiffusionModule` training checkpoint's network (EMA weights by default) with its provenance."""
        from vfmvae.dit.convert import load_checkpoint_file
        from vfmvae.dit.loading import _from_training, _is_training_checkpoint

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"diffusion checkpoint not found: {p}")
        ckpt = load_checkpoint_file(p, what="diffusion checkpoint")
        if not _is_training_checkpoint(ckpt):
            raise ValueError(f"{p} is not a DiffusionModule training checkpoint (no hyper_parameters/state_dict)")
        network, _, source, data = _from_training(p, ckpt, None, weights)
        hp = ckpt["hyper_parameters"]
        steps, batch = ckpt.get("global_step"), hp.get("global_batch_size")
        provenance = {
            "checkpoint": p.name,
            "checkpoint_sha256": _file_sha256(p),
            "optimizer_steps": steps,
            "images_seen": steps * batch if isinstance(steps, int) and isinstance(batch, int) else None,
            "transport": hp.get("transport"),
            **data,
        }
        return cls(network, hp, weights=source["weights"], provenance=provenance, metrics=metrics)


def load_diffusion_network(path: str | os.PathLike, **kwargs: Any) -> nn.Module:
    """The network of an export folder or Hub id (eval mode; ``kwargs`` as `from_pretrained`)."""
    export = DiffusionNetworkExport.from_pretrained(path, **kwargs)
    export.network.export_record = export.record()
    return export.network


def _state(network: nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies (safetensors refuses shared or strided storage)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in network.state_dict().items()}


def _file_sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def diffusion_model_card(record: Mapping[str, Any]):
    """The model card (``huggingface_hub.ModelCard``) of a diffusion-network export record."""
    build, prov = record["build"], record.get("provenance") or {}
    shape = "x".join(str(s) for s in record.get("latent_shape") or []) or "-"
    tokenizer = (prov.get("tokenizer") or {}).get("weights_sha256")
    return model_card(
        title=f"{build['network']} diffusion network ({build.get('preset', 'default preset')}) on VFM-VAE latents",
        summary=(
            f"A class-conditional latent diffusion network ({build['network']}) trained on {shape} tokenizer "
            "latents, as in the paper's generation experiments (Sec. 4). Decode its samples with the tokenizer "
            "whose weights hash is listed under Provenance."
        ),
        model_rows={
            "family / preset": f"{build['network']} / {build.get('preset', '-')}",
            "latent shape": shape,
            "parameters": f"{record.get('parameters', 0):,}",
            "weights": record.get("weights"),
            "format": record.get("format"),
        },
        training_rows={
            "images seen": prov.get("images_seen"),
            "optimiser steps": prov.get("optimizer_steps"),
            "transport": prov.get("transport"),
            "tokenizer of the latents": None if tokenizer is None else f"`{tokenizer[:16]}...`",
        },
        metrics=record.get("metrics") or {},
        hashes={"model.safetensors": record["weights_sha256"], **provenance_hashes(prov)},
        usage=(
            "from vfmvae.dit.export import DiffusionNetworkExport\n\n"
            'export = DiffusionNetworkExport.from_pretrained("this-folder-or-owner/name")  # offline by default\n'
            "network = export.network  # vfmvae.dit.interface.DiffusionNetwork, eval mode\n"
            'latent_stats = export.provenance.get("latent_stats")  # mean / std of the training latents'
        ),
        files=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME],
        tags=TAGS,
    )
