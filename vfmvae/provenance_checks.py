"""Checks that the inputs of a run belong together: tokenizer -> latent cache -> latent statistics -> network.

Every latent a diffusion network sees was encoded by one tokenizer and normalised by one cache's per-channel
statistics (docs/design.md, "Latent normalisation"); decoding its samples needs that same tokenizer and those
same statistics. A swapped statistics file or decoder raises no error by itself: training goes on with a
wrong normalisation and samples decode to wrong colours. So each link is recorded as a hash
(docs/design.md, "Checkpoints, resume and provenance") and checked where two of them meet:

- the latent-cache manifest records the tokenizer's ``weights_sha256`` and ``latent_stats.sha256``
  (:func:`latent_stats_sha256` of its ``latents_stats.pt``);
- a diffusion checkpoint records the cache's tokenizer record and the statistics it trained with;
- the latents DataModule, the sample-grid callback and the sampling command compare what they are given
  with those records (:func:`check_latent_stats`, :func:`check_tokenizer_hash`, :func:`sampling_inputs`).

A mismatch is a one-line :class:`ProvenanceMismatchError` naming both hashes, where each comes from and the
fix. A record that is missing (a cache or checkpoint written before the hash was recorded, an official file)
cannot be checked: that is said once per source as a warning, and the run goes on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vfmvae.provenance import state_dict_sha256

__all__ = [
    "ProvenanceMismatchError",
    "check_latent_stats",
    "check_tokenizer_hash",
    "decoder_weights_sha256",
    "export_weights_sha256",
    "latent_stats_sha256",
    "sampling_inputs",
    "warn_once",
]

log = logging.getLogger(__name__)
_WARNED: set[str] = set()


class ProvenanceMismatchError(ValueError):
    """Two inputs of a run come from different chains (one-line message naming both and the fix)."""


def warn_once(key: str, message: str) -> None:
    """Log ``message`` as a warning the first time ``key`` is seen in this process."""
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(message)


def latent_stats_sha256(stats: Any) -> str:
    """Content hash of latent statistics: `state_dict_sha256` of ``mean`` and ``std`` as ``(1, C, 1, 1)`` float32.

    ``stats``: a `LatentNormalizer` (anything with ``stats_dict()``) or a mapping with ``mean``/``std`` (tensors
    or the nested lists a checkpoint's provenance holds). The same numbers give the same hash whichever form
    and file they come from (an official ``latents_stats.pt`` re-saved by us keeps its hash).
    """
    if hasattr(stats, "stats_dict"):
        stats = stats.stats_dict()
    if not isinstance(stats, Mapping) or not {"mean", "std"} <= set(stats):
        raise ValueError("latent statistics need 'mean' and 'std'")
    tensors = {k: torch.as_tensor(stats[k], dtype=torch.float32).reshape(1, -1, 1, 1) for k in ("mean", "std")}
    return state_dict_sha256(tensors)


def check_latent_stats(
    stats: Any,
    expected_sha256: str | None,
    *,
    stats_source: str,
    expected_source: str,
    fix: str,
) -> str:
    """Refuse statistics other than the recorded ones; returns their hash.

    ``expected_sha256`` is the hash recorded by the cache manifest or the checkpoint (``expected_source`` says
    which); ``None`` = nothing recorded: warn once for that source and accept.
    """
    got = latent_stats_sha256(stats)
    if expected_sha256 is None:
        warn_once(
            f"stats:{expected_source}",
            f"{expected_source} records no hash of its latent statistics (written before they were recorded): "
            f"cannot check that {stats_source} belongs to it; {fix}",
        )
    elif got != expected_sha256:
        raise ProvenanceMismatchError(
            f"latent statistics {stats_source} (sha256 {got[:12]}) are not the ones recorded by {expected_source} "
            f"(sha256 {expected_sha256[:12]}): they come from another latent cache; {fix}"
        )
    return got


def decoder_weights_sha256(decoder: Any) -> str | None:
    """The tokenizer ``weights_sha256`` an export folder recorded for this (decoder-only) model, or None."""
    return (getattr(decoder, "export_record", None) or {}).get("weights_sha256")


def export_weights_sha256(source: str | os.PathLike | None) -> str | None:
    """The ``weights_sha256`` a tokenizer export folder records (its config only, no weights read), else None.

    An official ``.pth`` or a random decoder (``None``) records none. `vfmvae.tokenizer.export.from_pretrained`
    checks the weights against this same record when it loads them.
    """
    if source is None or not Path(source).is_dir():
        return None
    from vfmvae.tokenizer.sources import recorded_weights_sha256

    return recorded_weights_sha256(source)  # any tokenizer kind's export folder


def check_tokenizer_hash(
    cache_hash: str | None,
    tokenizer_hash: str | None,
    *,
    subject: str,
    tokenizer_source: str,
    fix: str,
    allow_mismatch: bool = False,
) -> None:
    """Refuse a decoder (or a run's tokenizer) other than the one the latents were made with, by weights hash.

    ``subject`` names what was trained on the latents ("the network"); ``tokenizer_source`` the argument that
    gave the other tokenizer. Either hash unknown (an official ``.pth`` decoder has no recorded hash; an old
    cache): warn once and accept. ``allow_mismatch``: accept a mismatch (the caller's explicit opt-out).
    """
    if not cache_hash or not tokenizer_hash:
        which = "the latent cache" if not cache_hash else tokenizer_source
        warn_once(
            f"tokenizer:{tokenizer_source}:{cache_hash}:{tokenizer_hash}",
            f"{which} records no tokenizer weights hash: cannot check that {tokenizer_source} is the tokenizer "
            "the latents were made with",
        )
        return
    if cache_hash != tokenizer_hash and not allow_mismatch:
        raise ProvenanceMismatchError(
            f"{subject} was trained on latents of tokenizer {cache_hash[:12]}, but {tokenizer_source} is "
            f"{tokenizer_hash[:12]}; {fix}"
        )


def sampling_inputs(
    decoder: Any,
    training_provenance: Mapping[str, Any],
    latent_stats_path: str | None,
    allow_tokenizer_mismatch: bool = False,
):
    """The checked statistics and tokenizer hashes of a sampling run: ``(normalizer, export_hash, cache_hash)``.

    ``training_provenance``: the checkpoint's record (``{}`` for an official file). The decoder must be the
    tokenizer the latents were made with (``--allow-tokenizer-mismatch`` opts out); ``--latent-stats``, when
    given, must be the statistics the network trained with. Without a path, the recorded ones are used.
    """
    from vfmvae.tokenizer.loading import load_latent_stats

    export_hash = decoder_weights_sha256(decoder)
    cache_hash = (training_provenance.get("tokenizer") or {}).get("weights_sha256")
    if training_provenance:
        check_tokenizer_hash(
            cache_hash,
            export_hash,
            subject="the network",
            tokenizer_source="--tokenizer",
            fix="decode with the same tokenizer (or pass --allow-tokenizer-mismatch)",
            allow_mismatch=allow_tokenizer_mismatch,
        )
    recorded = training_provenance.get("latent_stats")
    normalizer = load_latent_stats(latent_stats_path, recorded)
    if latent_stats_path is not None and training_provenance:
        root = training_provenance.get("latent_root") or "its latent cache"
        check_latent_stats(
            normalizer,
            latent_stats_sha256(recorded) if recorded else None,
            stats_source=f"--latent-stats {latent_stats_path}",
            expected_source=f"the checkpoint (trained on {root})",
            fix=f"omit --latent-stats to use the recorded statistics, or give {root}/latents_stats.pt",
        )
    return normalizer, export_hash, cache_hash
