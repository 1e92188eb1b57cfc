"""The weights hash of a network's frozen text encoders: recorded in the diffusion checkpoint, checked on resume
and by `sample-t2i` (docs/design.md, "Checkpoints, resume and provenance"; docs/text_to_image.md, "Text encoders").

A frozen text encoder (`vfmvae.text.frozen.FrozenTextModule`) is not stored in checkpoints: it is rebuilt from
``text_encoder_path`` (or a seeded random preset) whenever the network is built. If the folder's weights change
between training and sampling (or resume), nothing else would notice: the prompts would map to other features
and the network would draw from a condition it never saw. So the run records, per encoder, the sha256 of its
frozen model's weights (`vfmvae.provenance.state_dict_sha256`, as the conditional tokenizer records its SigLIP2
text tower) and where they came from:

    {"text_encoder": {"kind": "causal_lm", "path": "<folder>" | None, "preset": "debug" | None,
                      "dtype": "float32", "sha256": "<hex>"}}

keyed by the encoder's module name in the network. :func:`check_text_encoders` refuses a rebuilt encoder whose
hash differs (one line naming both hashes and both paths); a checkpoint without the record (written before it
was kept) is accepted with one warning per checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from vfmvae.provenance_checks import ProvenanceMismatchError, warn_once
from vfmvae.text.frozen import FrozenTextModule

__all__ = ["check_text_encoders", "text_encoder_records"]


def text_encoder_records(net: nn.Module) -> dict[str, dict[str, Any]]:
    """``{module name: record}`` of every frozen text encoder in ``net`` (``{}`` for a network without one).

    Each hash is computed once per encoder (`FrozenTextModule.weights_sha256`), so call this before the network
    is sharded or cast (the diffusion module does it in ``setup``).
    """
    return {
        name: {**(module.source or {}), "sha256": module.weights_sha256()}
        for name, module in net.named_modules()
        if isinstance(module, FrozenTextModule)
    }


def _where(record: Mapping[str, Any]) -> str:
    path = record.get("path")
    return str(path) if path else f"random preset {record.get('preset')!r}"


def check_text_encoders(
    net: nn.Module,
    recorded: Mapping[str, Mapping[str, Any]] | None,
    *,
    source: str,
    current: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Refuse frozen text encoders of ``net`` whose weights differ from those ``source`` recorded.

    ``recorded``: the checkpoint's ``provenance["text_encoders"]`` (``None``: not recorded, warn once per
    ``source``). ``current``: this run's records when already computed (else computed from ``net``).
    """
    current = text_encoder_records(net) if current is None else current
    if not current:
        return
    if recorded is None:
        warn_once(
            f"text_encoders:{source}",
            f"{source} records no text encoder weights hash (written before it was recorded): cannot check that "
            f"the text encoder at {', '.join(_where(r) for r in current.values())} is the one it was trained with",
        )
        return
    for name, record in current.items():
        saved = recorded.get(name)
        if saved is None or not saved.get("sha256"):
            warn_once(f"text_encoders:{source}:{name}", f"{source} records no weights hash for text encoder {name}")
        elif saved["sha256"] != record["sha256"]:
            raise ProvenanceMismatchError(
                f"text encoder {name} at {_where(record)} has weights sha256 {record['sha256'][:12]}, but the run "
                f"was trained with {saved['sha256'][:12]} (at {_where(saved)}); point text_encoder_path at the "
                "weights it was trained with"
            )
