"""Atomic checkpoint writing: temporary name + rename (docs/design.md, "Checkpoints, resume and provenance").

A checkpoint written in place is destroyed if the job is killed half way (pre-emption, OOM
kill, full disk): the previous good file is already truncated. Here every write goes to a
temporary file *in the same directory* (so the final rename never crosses a filesystem),
is flushed and fsync'ed, and only then replaces the target with ``os.replace``, which POSIX
guarantees to be atomic. A reader therefore sees either the old file or the complete new
one, never a partial file. A write that raises removes its ``.tmp`` file; one left by a killed
process is removed at the start of the next run (`vfmvae.utils.checkpoint_files.remove_stale_temporaries`).
Results get the permissions a plain ``open()`` would give (``0666 & ~umask``), not mkstemp's 0600.

Used by ``callbacks/atomic_checkpoint.py`` (every Lightning checkpoint) and by scripts that
write ``.pt``/``.safetensors``/``.npz`` artefacts via :func:`atomic_write`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch

__all__ = ["atomic_save", "atomic_write", "atomic_open", "atomic_path"]


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (the directory entry); a no-op where directories can't be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows, some network filesystems
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    try:  # Linux exposes it read-only; setting it (below) briefly affects other threads
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on clean exit fsync it and rename it to ``path``.

    If the body raises (or the process dies), ``path`` keeps its previous content.
    ``mode`` must be a write mode (``"wb"`` or ``"w"``).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open only supports write modes 'wb' and 'w', got {mode!r}")
    if Path(os.fspath(path)).is_dir():
        raise IsADirectoryError(f"atomic checkpoint target {str(path)!r} is a directory")
    with atomic_path(path) as tmp_name, open(tmp_name, mode) as f:
        yield f


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """A temporary file name next to ``path`` for writers that take a file name (``safetensors.save_file``).

    On clean exit the file gets the permissions a plain ``open()`` would give (``0666 & ~umask``, not the 0600
    of mkstemp or of writers that replace the file: caches and checkpoints are shared between users), is
    fsync'ed and renamed to ``path``; on error it is removed and ``path`` is untouched.
    """
    path = Path(os.fspath(path))
    directory = path.parent if str(path.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    # Same directory => same filesystem => os.replace is a rename, not a copy.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        os.close(fd)
        yield tmp_name
        os.chmod(tmp_name, 0o666 & ~_umask())
        with open(tmp_name, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # BaseException: KeyboardInterrupt / SystemExit must not leave the temp file either.
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(directory)


def atomic_write(path: str | os.PathLike, write_fn: Callable[[IO[bytes]], None]) -> None:
    """Call ``write_fn(file_object)`` on a temporary file and atomically move it to ``path``.

    For writers that take a file object (``numpy.savez``, ``safetensors`` via bytes, ...).
    """
    with atomic_open(path, "wb") as f:
        write_fn(f)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` that either fully succeeds or leaves ``path`` untouched."""
    atomic_write(path, lambda f: torch.save(obj, f))
