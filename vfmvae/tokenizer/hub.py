"""`VFMVAE` as a ``huggingface_hub.ModelHubMixin``: ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``
with the export folder of `vfmvae.tokenizer.export` and a generated model card (docs/export.md).

The mixin's flow is kept (``save_pretrained`` calls ``_save_pretrained``, then writes ``config.json`` and the
card ``README.md`` unless present; ``from_pretrained`` reads ``config.json`` and calls ``_from_pretrained``);
what is ours is the folder's content and three defaults:

* ``from_pretrained`` is local-first and offline: a folder is read as is; a Hub id is looked up in the local
  Hugging Face cache unless ``local_files_only=False`` (`vfmvae.utils.hub.resolve_pretrained`);
* ``save_pretrained`` takes the export options (``weights``, ``provenance``, ``metrics``, the VFM's handling)
  and returns the ``config.json`` record, as `vfmvae.tokenizer.export.save_pretrained` always did;
* ``push_to_hub`` uploads exactly the folder ``save_pretrained`` writes (one commit).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import ModelHubMixin

from vfmvae.utils.hub import PAPER

__all__ = ["TokenizerHubMixin"]

EXPORT_OPTIONS = ("vfm_pretrained", "include_vfm", "weights", "provenance", "metrics")


class TokenizerHubMixin(
    ModelHubMixin,
    library_name="vfmvae",
    paper_url=PAPER["url"],
    tags=["vfm-vae", "image-tokenizer", "autoencoder", "latent-diffusion"],
):
    """Hub methods of `VFMVAE` (mixed into the model class; see the module docstring)."""

    _export_options: dict[str, Any] | None = None

    def _save_pretrained(self, save_directory: Path) -> None:
        from .export import write_export

        write_export(self, save_directory, **(self._export_options or {}))

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        vfm_pretrained: str | os.PathLike | None = None,
        include_vfm: bool | None = None,
        weights: str = "raw",
        provenance: Mapping[str, Any] | None = None,
        metrics: Any = None,
        config: Any = None,
        model_card_kwargs: Mapping[str, Any] | None = None,
        repo_id: str | None = None,
        push_to_hub: bool = False,
        **push_to_hub_kwargs: Any,
    ) -> dict[str, Any]:
        """Write the export folder (weights, ``config.json``, model card); returns the ``config.json`` record.

        ``weights``: "ema" or "raw" (recorded); ``provenance``: JSON-able facts of the training run (stage,
        images seen, source checkpoint); ``metrics``: measured metrics (``{name: value}`` or evaluation records)
        shown on the card; ``push_to_hub=True`` uploads the folder to ``repo_id`` (default: the folder name).
        ``config`` (the mixin's) is ignored: ``config.json`` is the export record.
        """
        from vfmvae.utils.hub import upload_folder

        from .export import read_export_config

        options = dict(vfm_pretrained=vfm_pretrained, include_vfm=include_vfm, weights=weights)
        options.update(provenance=provenance, metrics=metrics)
        self._export_options = options
        try:
            super().save_pretrained(save_directory, model_card_kwargs=dict(model_card_kwargs or {}))
        finally:
            self._export_options = None
        if push_to_hub:
            upload_folder(save_directory, repo_id or Path(save_directory).name, **push_to_hub_kwargs)
        return read_export_config(save_directory)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str = "Upload VFM-VAE tokenizer",
        branch: str | None = None,
        create_pr: bool | None = None,
        **export_options: Any,
    ) -> str:
        """Export into a temporary folder (``export_options`` as `save_pretrained`) and upload it; the commit URL."""
        from vfmvae.utils.hub import upload_folder

        unknown = sorted(set(export_options) - set(EXPORT_OPTIONS))
        if unknown:
            raise TypeError(f"push_to_hub: unknown arguments {unknown}; export options are {EXPORT_OPTIONS}")
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / repo_id.split("/")[-1]
            self.save_pretrained(folder, **export_options)
            return upload_folder(
                folder,
                repo_id,
                private=private,
                token=token,
                commit_message=commit_message,
                branch=branch,
                create_pr=create_pr,
            )

    def generate_model_card(self, *args: Any, **kwargs: Any):
        """The card of this model as it would be exported (``README.md``; `write_export` writes the same)."""
        from .export import build_record, tokenizer_model_card

        return tokenizer_model_card(build_record(self, **(self._export_options or {})))

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        decoder_only: bool = False,
        vfm_pretrained: str | os.PathLike | None = None,
        verify_vfm: bool = True,
        map_location: str = "cpu",
        text_pretrained: str | os.PathLike | None = None,
        local_files_only: bool = True,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        force_download: bool = False,
    ):
        """An export folder, or a Hub repository id (local cache only unless ``local_files_only=False``).

        ``decoder_only=True`` never builds the VFM or the head; ``vfm_pretrained`` overrides the recorded VFM
        location (its weights hash is checked unless ``verify_vfm=False``). Folders of the earlier format
        (``vfmvae-tokenizer/1``, no card) load too. Eval mode. A text-conditional tokenizer's text tower is
        rebuilt the same way (``text_pretrained`` overrides its recorded folder; docs/conditional.md).
        """
        from vfmvae.utils.hub import resolve_pretrained

        folder = resolve_pretrained(
            pretrained_model_name_or_path,
            what="tokenizer",
            allow_patterns=["*.json", "*.safetensors", "*.md"],
            local_files_only=local_files_only,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            force_download=force_download,
        )
        return super().from_pretrained(
            folder,
            local_files_only=True,
            decoder_only=decoder_only,
            vfm_pretrained=vfm_pretrained,
            verify_vfm=verify_vfm,
            map_location=map_location,
            text_pretrained=text_pretrained,
        )

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
        vfm: Any = None,  # the mixin passes config.json's "vfm" record (it is an __init__ name); read below again
        text_encoder: Any = None,  # likewise the "text_encoder" record of a text-conditional tokenizer
        decoder_only: bool = False,
        vfm_pretrained: str | os.PathLike | None = None,
        verify_vfm: bool = True,
        map_location: str = "cpu",
        text_pretrained: str | os.PathLike | None = None,
    ):
        from .export import from_pretrained

        return from_pretrained(
            model_id,
            decoder_only=decoder_only,
            vfm_pretrained=vfm_pretrained,
            verify_vfm=verify_vfm,
            map_location=map_location,
            text_pretrained=text_pretrained,
        )
