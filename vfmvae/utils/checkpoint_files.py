"""Which checkpoint files of a run folder are complete, which is the newest, and which are leftovers.

`--ckpt_path last` (docs/design.md, "Checkpoints, resume and provenance") must resume the newest
*complete* checkpoint. Lightning's own ``"last"`` looks only at files named ``last*.ckpt`` and takes the one
with the newest modification time, so a periodic checkpoint written after ``last.ckpt`` (a job killed
between the two writes, or ``last.ckpt`` truncated by a copy that did not finish) is never considered, and
a truncated ``last.ckpt`` fails the resume with a 60-line traceback. Here every ``*.ckpt`` of the folders
counts, incomplete ones are skipped with the reason, and the newest by modification time wins (the newest
write, which is also the branch the user last chose when an earlier checkpoint was resumed on purpose).

Complete means: a single-file checkpoint is a zip archive whose central directory (at the end of the file,
so a truncated file has none) lists torch's ``data.pkl``; a sharded folder checkpoint
(``torch.distributed.checkpoint``) holds its ``.metadata``, written last. This reads the zip directory only,
not the tensors (a 10 GB checkpoint costs milliseconds).

Leftovers: an atomic write (`vfmvae.utils.checkpoint_io.atomic_open`) goes to ``.<name>.<random>.tmp`` and is
renamed when complete; a process killed mid-write leaves the temporary file (~10 GB at XL size).
:func:`remove_stale_temporaries` deletes them at the start of a run. Plain PyTorch; no Lightning import.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "checkpoint_problem",
    "list_checkpoints",
    "newest_complete_checkpoint",
    "remove_stale_temporaries",
]

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIX = ".ckpt"
# `.<target name>.<mkstemp random part>.tmp` (atomic_open) and `<target>.dcp.tmp` (FSDP2 consolidation).
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$|^.+\.dcp\.tmp$")


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a complete checkpoint (one short phrase), or None when it is complete."""
    path = Path(path)
    if path.is_dir():
        return None if (path / ".metadata").is_file() else "a sharded checkpoint folder without its .metadata"
    if not path.is_file():
        return "missing"
    if path.stat().st_size == 0:
        return "empty"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return "truncated or not a checkpoint (no zip central directory)"
    if not any(name.endswith("data.pkl") for name in names):
        return "not written by torch.save (no data.pkl record)"
    return None


def list_checkpoints(folders: Iterable[str | os.PathLike]) -> list[Path]:
    """The ``*.ckpt`` files and folder checkpoints directly inside ``folders`` (leftovers excluded)."""
    found: dict[Path, None] = {}
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith(".") or entry.suffix != CHECKPOINT_SUFFIX:
                continue
            found[entry.resolve()] = None
    return list(found)


def newest_complete_checkpoint(
    folders: Iterable[str | os.PathLike],
) -> tuple[Path | None, list[tuple[Path, str]]]:
    """``(newest complete checkpoint or None, [(newer incomplete checkpoint, problem), ...])``.

    Newest = latest modification time (ties: the larger name, e.g. ``step=...`` zero-padded). The skipped list
    holds the incomplete checkpoints that were newer than the one returned, so the caller can say so.
    """
    ordered = sorted(list_checkpoints(folders), key=lambda p: (p.stat().st_mtime, p.name), reverse=True)
    skipped: list[tuple[Path, str]] = []
    for path in ordered:
        problem = checkpoint_problem(path)
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed atomic write left in ``folder``; returns them (logged one per line).

    Call it only when no other process writes checkpoints into ``folder`` (the start of a run, rank 0).
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in sorted(folder.iterdir()):
        if not _TEMPORARY.match(entry.name) or not entry.is_file():
            continue
        size = entry.stat().st_size
        try:
            entry.unlink()
        except OSError as err:
            log.warning("could not remove the stale temporary file %s: %s", entry, err)
            continue
        log.warning("removed %s (%.1f MB), left by a checkpoint write that did not finish", entry, size / 2**20)
        removed.append(entry)
    return removed
