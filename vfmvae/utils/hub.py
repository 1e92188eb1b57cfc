"""Hugging Face Hub conventions shared by the tokenizer and diffusion-network exports (docs/export.md).

An export folder is what ``huggingface_hub.ModelHubMixin.save_pretrained`` writes: ``config.json``,
``model.safetensors`` and a model card ``README.md`` (YAML metadata + text), so it can be uploaded as a model
repository as is and read back by ``from_pretrained`` from the folder or from the repository id.

* `resolve_pretrained(model_id)`: a local folder is used as is (never touches the network); anything else is
  a Hub repository id, looked up **in the local Hugging Face cache only** unless the caller passes
  ``local_files_only=False`` (loading stays offline by default, docs/export.md, "Loading");
* `model_card(...)`: the generated ``README.md``: what the model is, the paper, training images seen,
  measured metrics, provenance hashes;
* `metrics_table(metrics)`: measured metrics given as ``{name: value}`` or as evaluation records
  (`vfmvae.metrics.record`) -> ``{name: value}``;
* `upload_folder(folder, repo_id)`: ``push_to_hub`` of a folder already written.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["PAPER", "model_card", "metrics_table", "provenance_hashes", "resolve_pretrained", "upload_folder"]

PAPER = {
    "title": "Vision Foundation Models Can Be Good Tokenizers for Latent Diffusion Models",
    "arxiv": "2510.18457",
    "url": "https://arxiv.org/abs/2510.18457",
}
LIBRARY_NAME = "vfmvae"
CARD_NAME = "README.md"


def resolve_pretrained(
    model_id: str | os.PathLike,
    *,
    what: str,
    allow_patterns: Iterable[str] | None = None,
    local_files_only: bool = True,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    force_download: bool = False,
) -> Path:
    """The folder holding ``model_id``: a local folder, or a Hub snapshot (local cache unless allowed online)."""
    path = Path(model_id).expanduser()
    if path.is_dir():
        return path
    if path.exists() or str(model_id).count("/") != 1 or str(model_id).startswith((".", "/", "~")):
        raise FileNotFoundError(
            f"{what} {model_id}: no such export folder (one holding config.json) and not a Hub repository id "
            "'owner/name'"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = snapshot_download(
            str(model_id),
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
            force_download=force_download,
            allow_patterns=list(allow_patterns) if allow_patterns is not None else None,
        )
    except LocalEntryNotFoundError as err:
        hint = (
            "pass local_files_only=False to download it (loading is offline by default)"
            if local_files_only
            else "the download failed (HF_HUB_OFFLINE=1 forbids it; unset it to download)"
        )
        raise FileNotFoundError(
            f"{what} {model_id}: not a local folder and not in the Hugging Face cache; {hint}"
        ) from err
    return Path(folder)


def metrics_table(metrics: Mapping[str, Any] | Iterable[Mapping[str, Any]] | None) -> dict[str, float | None]:
    """``{name: value}`` from a flat mapping, an evaluation record or a list of records (``kind/name`` keys)."""
    if metrics is None:
        return {}
    records = [metrics] if isinstance(metrics, Mapping) else list(metrics)
    table: dict[str, float | None] = {}
    for record in records:
        if "results" in record and "kind" in record:  # vfmvae.metrics.record
            for name, value in record["results"].items():
                table[f"{record['kind']}/{name}"] = None if value is None else float(value)
        else:
            for name, value in record.items():
                if value is not None and not isinstance(value, (int, float)):
                    raise TypeError(f"metric {name!r}: a number or None, got {type(value).__name__}")
                table[str(name)] = None if value is None else float(value)
    return table


def provenance_hashes(record: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Every ``*sha256*`` string in ``record`` (nested keys joined with dots): the card's provenance table."""
    found: dict[str, str] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            found.update(provenance_hashes(value, f"{name}."))
        elif isinstance(value, str) and "sha256" in str(key):
            found[name] = value
    return found


def _rows(rows: Mapping[str, Any]) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {key} | {'-' if value is None else value} |" for key, value in rows.items()]
    return "\n".join(lines)


def model_card(
    *,
    title: str,
    summary: str,
    model_rows: Mapping[str, Any],
    training_rows: Mapping[str, Any],
    metrics: Mapping[str, float | None],
    hashes: Mapping[str, str],
    usage: str,
    files: Iterable[str],
    tags: Iterable[str],
):
    """The export's ``README.md`` as a ``huggingface_hub.ModelCard`` (metadata: library, tags, the paper)."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(library_name=LIBRARY_NAME, tags=sorted({*tags, "model_hub_mixin", f"arxiv:{PAPER['arxiv']}"}))
    metric_text = (
        _rows({k: "-" if v is None else f"{v:.4f}" for k, v in metrics.items()})
        if metrics
        else "No metric was measured for this export (add them with `vfmvae push-to-hub --metrics`)."
    )
    hash_text = "\n".join(["| what | sha256 |", "|---|---|", *(f"| {k} | `{v}` |" for k, v in hashes.items())])
    body = f"""
# {title}

{summary}

Paper: [{PAPER["title"]}]({PAPER["url"]}) (arXiv:{PAPER["arxiv"]}).

## Model

{_rows(model_rows)}

## Training

{_rows(training_rows)}

## Metrics

{metric_text}

## Provenance

The weights hash is the sha256 of the tensors in `model.safetensors` (`vfmvae.provenance.state_dict_sha256`);
loading checks it.

{hash_text}

## Usage

```python
{usage.strip()}
```

Files: {", ".join(f"`{f}`" for f in files)}.
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def upload_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload with vfmvae push-to-hub",
    branch: str | None = None,
    create_pr: bool | None = None,
) -> str:
    """``push_to_hub`` of an export folder already written (one commit); the commit's URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id=repo_id, private=private, exist_ok=True).repo_id
    info = api.upload_folder(
        repo_id=repo_id,
        repo_type="model",
        folder_path=str(folder),
        commit_message=commit_message,
        revision=branch,
        create_pr=create_pr,
    )
    return str(getattr(info, "commit_url", info))
