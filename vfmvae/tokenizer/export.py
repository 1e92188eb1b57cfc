"""Tokenizer export folders: `save_pretrained` / `from_pretrained` / `load_tokenizer` (docs/export.md).

An export folder holds what a user of the trained tokenizer needs, and nothing that can be rebuilt; it is a
Hugging Face model repository as ``ModelHubMixin`` writes one (`vfmvae.tokenizer.hub`):

    <dir>/config.json          format tag, `VFMVAEConfig`, VFM record, weights hash, provenance, metrics
    <dir>/model.safetensors    head (if any) + decoder weights (the EMA weights when trained:
                               the paper evaluates and releases `G_ema`)
    <dir>/vfm.safetensors      only when the frozen VFM is included (see below)
    <dir>/README.md            the model card: what it is, the paper, images seen, metrics, provenance hashes

The frozen VFM (1.2 GB for SigLIP2-L) is **not** duplicated by default: `config.json` records its
preset name, its config overrides, the local path it was loaded from and the sha256 of its
weights; `from_pretrained` rebuilds it from that path (or from `vfm_pretrained=`) and checks the
hash. A VFM that was *not* loaded from a file (random init: tests, the CPU demo) cannot be rebuilt,
so it is included automatically; `include_vfm=True` forces inclusion.

`weights_sha256` is `vfmvae.provenance.state_dict_sha256` of exactly the tensors in
`model.safetensors`; it flows into latent-cache manifests and diffusion checkpoints
(docs/design.md, "Checkpoints, resume and provenance"). `decoder_only=True` loading never builds the VFM or the head.

Format ``vfmvae-tokenizer/2`` adds the card and the ``metrics`` / ``library_name`` / ``paper`` fields to
``vfmvae-tokenizer/1``; folders of both formats load. The architecture travels as ``VFMVAEConfig.to_dict()``
and comes back through ``VFMVAEConfig.from_dict`` (fields added to the config need no change here).

`load_tokenizer(path)` accepts an export folder, a Hub repository id (local cache unless allowed online) or an
official release file (`..._legacy.pth`, a dict with `G_ema`) together with its official `generator_kwargs`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vfmvae.provenance import check_sha256, state_dict_sha256, to_jsonable
from vfmvae.utils.hub import PAPER, metrics_table, model_card, provenance_hashes, resolve_pretrained

from .config import VFMVAEConfig
from .export_text import load_text_record, text_record, write_text_weights
from .model import VFMVAE

EXPORT_FORMAT = "vfmvae-tokenizer/2"
SUPPORTED_FORMATS = ("vfmvae-tokenizer/1", EXPORT_FORMAT)  # /1: the same folder without card and metrics
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
WEIGHTS_NAME = "model.safetensors"
VFM_WEIGHTS_NAME = "vfm.safetensors"
ENCODER_PREFIXES = ("head.",)  # encoder-side keys, skipped by decoder-only loading
VFM_PREFIX = "vfm."
FROZEN_PREFIXES = (VFM_PREFIX, "text_encoder.")  # the VFM; the text tower of a text decoder (docs/conditional.md)


def _config_overrides(vfm: nn.Module, preset_name: str) -> dict[str, Any]:
    """Fields of the VFM's `VFMConfig` that differ from its preset (so loading rebuilds the same VFM)."""
    cfg = getattr(vfm, "config", None)
    if cfg is None or not dataclasses.is_dataclass(cfg):
        return {}
    from vfmvae.vfm.config import VFM_PRESETS

    preset = VFM_PRESETS.get(preset_name)
    if preset is None:
        return {}
    return {
        f.name: to_jsonable(getattr(cfg, f.name))
        for f in dataclasses.fields(cfg)
        if getattr(cfg, f.name) != getattr(preset, f.name)
    }


def _weights_state(model: VFMVAE) -> dict[str, torch.Tensor]:
    """Everything but the frozen towers, as contiguous CPU tensors (safetensors refuses shared/non-contiguous storage)."""
    return {
        k: v.detach().cpu().contiguous().clone()
        for k, v in model.state_dict().items()
        if not k.startswith(FROZEN_PREFIXES)
    }


def save_pretrained(model: VFMVAE, directory: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """Write `model` as an export folder (`VFMVAE.save_pretrained`, the mixin's flow); returns the record.

    Options (`write_export`): ``vfm_pretrained``, ``include_vfm``, ``weights`` ("ema"/"raw"), ``provenance``,
    ``metrics``; and the mixin's ``push_to_hub`` / ``repo_id``.
    """
    if not isinstance(model, VFMVAE):
        raise TypeError(f"save_pretrained expects a VFMVAE, got {type(model).__name__}")
    return model.save_pretrained(directory, **options)


def build_record(
    model: VFMVAE,
    *,
    vfm_pretrained: str | os.PathLike | None = None,
    include_vfm: bool | None = None,
    weights: str = "raw",
    provenance: Mapping[str, Any] | None = None,
    metrics: Any = None,
) -> dict[str, Any]:
    """The `config.json` record of `model` (hashes included; nothing written).

    Args:
        model: a `VFMVAE` (with or without encoder). Pass it with the EMA weights swapped in
            (`with ema.swap(): ...`) and `weights="ema"` to export `G_ema`.
        vfm_pretrained: local folder/file the VFM was loaded from (default: `model.vfm_pretrained`
            when set by `from_pretrained` / the training module). Recorded, not copied.
        include_vfm: store the VFM weights too. Default: only when there is no `vfm_pretrained`
            (a randomly initialised VFM cannot be rebuilt otherwise).
        weights: label recorded in the JSON ("ema" or "raw").
        provenance: extra JSON-able facts (stage, image counters, source checkpoint, ...).
        metrics: measured metrics, ``{name: value}`` or evaluation records (`vfmvae.utils.hub.metrics_table`).
    """
    if weights not in ("ema", "raw"):
        raise ValueError(f"save_pretrained: weights must be 'ema' or 'raw', got {weights!r}")
    record: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "library_name": "vfmvae",
        "paper": f"arXiv:{PAPER['arxiv']}",
        "config": model.cfg.to_dict(),
        "has_encoder": model.has_encoder,
        "weights": weights,
        "weights_sha256": state_dict_sha256(_weights_state(model)),
        "parameter_counts": model.parameter_counts(),
        "provenance": to_jsonable(dict(provenance or {})),
        "metrics": metrics_table(metrics),
    }
    if model.has_encoder:
        vfm_path = vfm_pretrained if vfm_pretrained is not None else getattr(model, "vfm_pretrained", None)
        record["vfm"] = {
            "name": model.cfg.vfm_name,
            "config_overrides": _config_overrides(model.vfm, model.cfg.vfm_name),
            "pretrained": None if vfm_path is None else str(Path(vfm_path).expanduser().resolve()),
            "included": (vfm_path is None) if include_vfm is None else bool(include_vfm),
            "weights_sha256": state_dict_sha256(_vfm_state(model)),
        }
    if model.text_encoder is not None:
        record["text_encoder"] = text_record(model)
    return record


def _vfm_state(model: VFMVAE) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.vfm.state_dict().items()}


def write_export(model: VFMVAE, directory: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """Write weights, `config.json` and the card `README.md` of `model` (options: `build_record`)."""
    from vfmvae.utils.checkpoint_io import atomic_write

    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"save_pretrained: {out} exists and is not a directory")
    record = build_record(model, **options)
    out.mkdir(parents=True, exist_ok=True)
    state = _weights_state(model)
    vfm = record.get("vfm")
    if vfm is not None and vfm["included"]:
        atomic_write(out / VFM_WEIGHTS_NAME, lambda f: f.write(_safetensors_bytes(_vfm_state(model))))
    elif (out / VFM_WEIGHTS_NAME).exists():
        (out / VFM_WEIGHTS_NAME).unlink()  # a stale copy from an earlier export would be misleading
    write_text_weights(model, record.get("text_encoder"), out, _safetensors_bytes)
    digest = record["weights_sha256"]
    atomic_write(out / WEIGHTS_NAME, lambda f: f.write(_safetensors_bytes(state, {"weights_sha256": digest})))
    card = str(tokenizer_model_card(record))
    atomic_write(out / CARD_NAME, lambda f: f.write(card.encode()))
    atomic_write(out / CONFIG_NAME, lambda f: f.write(json.dumps(record, indent=2).encode()))
    return record


def tokenizer_model_card(record: Mapping[str, Any]):
    """The model card (``huggingface_hub.ModelCard``) of an export record."""
    cfg, vfm, prov = record["config"], record.get("vfm") or {}, record.get("provenance") or {}
    side = cfg["img_resolution"] // cfg["compression"]
    counts = record.get("parameter_counts") or {}
    trained = sum(v for k, v in counts.items() if k not in ("vfm", "decoder"))  # decoder = its parts' sum
    files = [CONFIG_NAME, WEIGHTS_NAME, *([VFM_WEIGHTS_NAME] if vfm.get("included") else []), CARD_NAME]
    kind = "tokenizer" if record.get("has_encoder", True) else "decoder-only tokenizer"
    return model_card(
        title=f"VFM-VAE {kind} ({cfg['vfm_name']}, f{cfg['compression']}, {cfg['z_dim']} channels)",
        summary=(
            f"An image tokenizer for latent diffusion: a frozen vision foundation model ({cfg['vfm_name']}) "
            f"encodes an image, a latent head gives a {cfg['z_dim']}x{side}x{side} Gaussian latent at "
            f"{cfg['img_resolution']} px, and a multi-scale decoder reconstructs the image (paper Sec. 3)."
        ),
        model_rows={
            "latent": f"{cfg['z_dim']} x {side} x {side} at {cfg['img_resolution']} px (f{cfg['compression']})",
            "frozen VFM": f"{cfg['vfm_name']} ({'included' if vfm.get('included') else 'not included'})",
            "trained parameters": f"{trained:,}",
            "weights": record.get("weights"),
            "format": record.get("format"),
        },
        training_rows={
            "images seen": prov.get("global_nimg"),
            "stage": prov.get("stage_name", prov.get("stage")),
            "optimiser steps": prov.get("steps"),
            "initialised from": prov.get("init_checkpoint"),
        },
        metrics=record.get("metrics") or {},
        hashes={"model.safetensors": record["weights_sha256"], **provenance_hashes(record.get("provenance") or {})}
        | ({"frozen VFM": vfm["weights_sha256"]} if vfm.get("weights_sha256") else {}),
        usage=(
            "from vfmvae.tokenizer import VFMVAE\n\n"
            'tokenizer = VFMVAE.from_pretrained("this-folder-or-owner/name")  # offline unless local_files_only=False\n'
            "posterior = tokenizer.encode(images)  # images in [0, 1], (B, 3, H, W)\n"
            "reconstruction = tokenizer.decode(posterior.sample())  # in [-1, 1]"
        ),
        files=files,
        tags=["vfm-vae", "image-tokenizer", "autoencoder", "latent-diffusion"],
    )


def _safetensors_bytes(state: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    from safetensors.torch import save

    return save(dict(state), metadata=dict(metadata or {}))


def read_export_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The `config.json` record of an export folder (format checked: any of `SUPPORTED_FORMATS`)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a tokenizer export folder: {CONFIG_NAME} is missing")
    record = json.loads(path.read_text())
    if record.get("format") not in SUPPORTED_FORMATS:
        raise ValueError(f"{path}: unsupported export format {record.get('format')!r} (expected {SUPPORTED_FORMATS})")
    return record


def _build_vfm(
    record: Mapping[str, Any], directory: Path, vfm_pretrained, verify_vfm: bool
) -> tuple[nn.Module, str | None]:
    from vfmvae.vfm import build_vfm

    info = record.get("vfm")
    if info is None:
        raise ValueError(
            f"{directory}: the export has no VFM record (decoder-only export); load it with decoder_only=True"
        )
    overrides = dict(info.get("config_overrides") or {}) or None
    source = vfm_pretrained if vfm_pretrained is not None else info.get("pretrained")
    if info.get("included") and vfm_pretrained is None:
        from safetensors.torch import load_file

        vfm = build_vfm(info["name"], config=overrides)
        vfm.load_state_dict(load_file(str(directory / VFM_WEIGHTS_NAME)))
        return vfm, None
    if source is None:
        raise ValueError(f"{directory}: the VFM weights are neither included nor recorded; pass vfm_pretrained=")
    if not Path(source).expanduser().exists():
        raise FileNotFoundError(
            f"the frozen VFM of this export was loaded from {source!r}, which does not exist here; pass "
            f"vfm_pretrained=<local folder/file of {info['name']}> (or decoder_only=True to skip the encoder)"
        )
    vfm = build_vfm(info["name"], pretrained=source, config=overrides)
    if verify_vfm and info.get("weights_sha256"):
        mismatch = f"VFM weights at {source} (sha256 {{got}}) differ from the ones the tokenizer was trained with "
        check_sha256(vfm, info["weights_sha256"], mismatch + "({expected}); pass verify_vfm=False to override")
    return vfm, str(source)


def from_pretrained(
    directory: str | os.PathLike,
    decoder_only: bool = False,
    vfm_pretrained: str | os.PathLike | None = None,
    verify_vfm: bool = True,
    map_location: str | torch.device = "cpu",
    text_pretrained: str | os.PathLike | None = None,
    *,
    local_files_only: bool = True,
    revision: str | None = None,
) -> VFMVAE:
    """Load an export folder (or a Hub repository id, `resolve_pretrained`) as a `VFMVAE` in eval mode.

    `decoder_only=True` builds only the decoder (no VFM, no head; diffusion decoding).
    `vfm_pretrained` overrides the recorded VFM location; the VFM weights hash is checked unless
    `verify_vfm=False`; a text tower likewise (`text_pretrained`). Weights are checked against `weights_sha256`.
    """
    from safetensors.torch import load_file

    directory = resolve_pretrained(directory, what="tokenizer", local_files_only=local_files_only, revision=revision)
    record = read_export_config(directory)
    cfg = VFMVAEConfig.from_dict(record["config"])
    state = load_file(str(directory / WEIGHTS_NAME), device=str(map_location))
    mismatch = f"{directory / WEIGHTS_NAME}: weights hash {{got}} != recorded {{expected}} (file corrupted or replaced)"
    check_sha256(state, record["weights_sha256"], mismatch)
    if decoder_only or not record.get("has_encoder", True):
        if not decoder_only:
            raise ValueError(f"{directory} is a decoder-only export; load it with decoder_only=True")
        model = VFMVAE(cfg, decoder_only=True)
        state = {k: v for k, v in state.items() if not k.startswith(ENCODER_PREFIXES)}
        source = None
    else:
        vfm, source = _build_vfm(record, directory, vfm_pretrained, verify_vfm)
        text, text_source = load_text_record(record, directory, text_pretrained, verify_vfm)
        model = VFMVAE(cfg, vfm=vfm, text_encoder=text, text_pretrained=text_source)
    own = {k for k in model.state_dict() if not k.startswith(FROZEN_PREFIXES)}
    missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
    if missing or unexpected:
        raise KeyError(
            f"{directory}: export does not match its config: missing {missing[:10]}, unexpected {unexpected[:10]}"
        )
    model.load_state_dict(state, strict=False)  # the VFM was loaded above; completeness checked just now
    model.vfm_pretrained = source
    model.export_record = record
    return model.eval()


def _read_kwargs(generator_kwargs) -> dict[str, Any]:
    if isinstance(generator_kwargs, Mapping):
        return dict(generator_kwargs)
    path = Path(generator_kwargs)
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    # Accept an official training YAML / fixture JSON that nests the kwargs.
    for key in ("generator_kwargs", "G_kwargs"):
        if isinstance(data, Mapping) and key in data:
            return dict(data[key])
    return dict(data)


def load_tokenizer(
    path: str | os.PathLike,
    decoder_only: bool = False,
    *,
    vfm_pretrained: str | os.PathLike | None = None,
    generator_kwargs: Mapping[str, Any] | str | os.PathLike | None = None,
    vfm_config: Mapping[str, Any] | None = None,
    vfm_dtype: str | None = None,
    verify_vfm: bool = True,
) -> VFMVAE:
    """One loader for both formats: an export folder (`from_pretrained`) or an official release file.

    Official files (`.pth`/`.pt`/`.safetensors`, possibly wrapping `G_ema`) need the official
    `generator_kwargs` (a dict, or a JSON/YAML file holding them, e.g. the stage config); the VFM
    comes from `vfm_pretrained` (a local SigLIP2 folder) unless the file contains it.
    """
    p = Path(path).expanduser()
    if p.is_dir() or (not p.exists() and str(path).count("/") == 1 and not str(path).startswith((".", "/", "~"))):
        # an export folder, or a Hub repository id (local cache only: `resolve_pretrained`)
        return from_pretrained(path, decoder_only=decoder_only, vfm_pretrained=vfm_pretrained, verify_vfm=verify_vfm)
    if not p.is_file():
        raise FileNotFoundError(f"load_tokenizer: {p} is neither an export folder nor a checkpoint file")
    if generator_kwargs is None:
        raise ValueError(
            f"load_tokenizer: {p.name} is an official checkpoint file; pass generator_kwargs= "
            "(the official G_kwargs dict or the stage YAML/JSON that holds them)"
        )
    from .official import from_official

    source: Any = p
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        source = load_file(str(p))
    model = from_official(
        source,
        _read_kwargs(generator_kwargs),
        vfm_config,
        decoder_only=decoder_only,
        vfm_pretrained=vfm_pretrained,
        vfm_dtype=vfm_dtype,
    )
    model.vfm_pretrained = None if vfm_pretrained is None else str(vfm_pretrained)
    return model


def is_export_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / CONFIG_NAME).is_file()


__all__ = [
    "EXPORT_FORMAT",
    "SUPPORTED_FORMATS",
    "build_record",
    "tokenizer_model_card",
    "write_export",
    "save_pretrained",
    "from_pretrained",
    "load_tokenizer",
    "read_export_config",
    "is_export_dir",
]
