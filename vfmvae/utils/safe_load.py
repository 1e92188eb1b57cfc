"""The one loader for files a user gives us: weights, checkpoints, statistics, key lists (never runs their code).

A ``.pt``/``.pth``/``.ckpt``/``.pkl`` file is a Python pickle, and unpickling can call any function the file
names (``os.system`` included). :func:`load_user_file` therefore reads every such file without executing
code, by format (sniffed from the first bytes, not the extension):

* a PyTorch zip or legacy file: ``torch.load(..., weights_only=True)`` - tensors, containers, numbers,
  strings and the ``allowed_globals`` a caller names (e.g. ``argparse.Namespace`` in REG checkpoints);
* a safetensors file: ``safetensors.torch.load_file`` (no pickle at all);
* a plain pickle (the official filter key list ``.pkl``): :class:`PlainDataUnpickler`, which builds only
  ``str``/``bytes``/numbers/``list``/``tuple``/``dict``/``set``/``frozenset`` and refuses every other global.

A refusal, a truncated file or a file of another format raises a :class:`UserFileError` whose message is one
line naming the file, what was wrong and the fix (never the advice to retry with ``weights_only=False``).
``trust_pickle=True`` unpickles in full instead: only for files from a source the user trusts, e.g. an old
checkpoint that pickled a whole ``nn.Module``. Front ends turn it on for one run with ``--trust-pickle``,
which enters :func:`trusting_pickles` (every load inside it that is not told otherwise trusts).
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CorruptFileError",
    "PlainDataUnpickler",
    "UnsafePickleError",
    "UserFileError",
    "file_format",
    "load_plain_pickle",
    "load_user_file",
    "pickles_trusted",
    "set_pickle_trust",
    "trusting_pickles",
]

log = logging.getLogger(__name__)

TRUST_HINT = "--trust-pickle (see the README, 'What it trusts and what it checks')"
_TRUST = contextvars.ContextVar("vfmvae_trust_pickle", default=False)
TRUST_PICKLE_HELP = (
    "unpickle weight/checkpoint files in full (this can run code stored in them): only for files from a source "
    "you trust that hold Python objects besides tensors (e.g. a pickled nn.Module); by default files are read "
    "with torch.load(weights_only=True) or safetensors"
)
# `torch.save`'s legacy (pre-zip) format starts with a protocol-2 pickle of this magic number.
_LEGACY_TORCH_PREFIX = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


class UserFileError(ValueError):
    """A file given by the user cannot be used; the message is one line naming the file and the fix."""


class UnsafePickleError(UserFileError, pickle.UnpicklingError):
    """The file holds Python objects that only full unpickling (which can run code) would build."""


class CorruptFileError(UserFileError):
    """The file is empty, truncated, or of another format than the one expected."""


@contextlib.contextmanager
def trusting_pickles(enabled: bool = True) -> Iterator[None]:
    """Within the block, :func:`load_user_file` unpickles in full unless a call says otherwise (``--trust-pickle``)."""
    token = _TRUST.set(bool(enabled))
    try:
        yield
    finally:
        _TRUST.reset(token)


def set_pickle_trust(enabled: bool) -> None:
    """Trust (or not) pickles for the rest of the current :func:`trusting_pickles` block (a parsed flag)."""
    _TRUST.set(bool(enabled))


def pickles_trusted() -> bool:
    """Whether the current :func:`trusting_pickles` block trusts pickles (``--trust-pickle``)."""
    return _TRUST.get()


def file_format(path: str | os.PathLike) -> str:
    """``"torch-zip"``, ``"torch-legacy"``, ``"safetensors"``, ``"pickle"``, ``"empty"`` or ``"unknown"``.

    Decided from the first bytes: a zip archive (``PK``), torch's legacy magic number, a safetensors header
    (8-byte little-endian length, then ``{``), a pickle (protocol >= 2 starts with ``0x80``).
    """
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return "empty"
    if head.startswith(b"PK"):
        return "torch-zip"
    if head.startswith(_LEGACY_TORCH_PREFIX):
        return "torch-legacy"
    if len(head) > 8 and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x80" or head[:1] in (b"(", b"]", b"}"):  # protocol >= 2, or protocol 0/1 containers
        return "pickle"
    return "unknown"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _refused_global(err: BaseException) -> str | None:
    """The ``module.name`` torch's weights-only unpickler refused, if that is why it stopped."""
    for e in (err, err.__cause__, err.__context__):
        match = re.search(r"GLOBAL ([\w.]+)", str(e)) if e is not None else None
        if match:
            return match.group(1)
    return None


def _refusal(what: str, path: Path, name: str, trust_hint: str) -> UnsafePickleError:
    return UnsafePickleError(
        f"{what} {path}: not loaded: it holds Python objects ({name}) that only full unpickling can build, and "
        f"unpickling can run code; if you trust where the file comes from, pass {trust_hint}"
    )


def _weights_only_reason(err: BaseException) -> str:
    """The inner reason of torch's weights-only refusal (its outer message is a page of advice)."""
    inner = err.__context__ if err.__context__ is not None else err
    return _one_line(inner)[:160]


# ------------------------------------------------------------------------------------------ plain pickles
_PLAIN_GLOBALS = {
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "list"),
    ("builtins", "tuple"),
    ("builtins", "dict"),
    ("builtins", "str"),
    ("builtins", "bytes"),
    ("builtins", "bytearray"),
    ("builtins", "int"),
    ("builtins", "float"),
    ("builtins", "complex"),
    ("builtins", "bool"),
    ("_codecs", "encode"),  # protocol-2 pickles store bytes as _codecs.encode(str, "latin1")
}


class PlainDataUnpickler(pickle.Unpickler):
    """Unpickles only plain data (strings, numbers, lists, tuples, dicts, sets); any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__":  # protocols 0-2 use the Python 2 name of the builtins module
            module = "builtins"
        if (module, name) in _PLAIN_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"GLOBAL {module}.{name} is not plain data")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("GLOBAL persistent_id is not plain data")


def load_plain_pickle(path: str | os.PathLike, *, what: str = "file", trust_hint: str = TRUST_HINT) -> Any:
    """A pickle of plain data (e.g. the official key list ``.pkl``), read without executing code."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return PlainDataUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as err:
        name = _refused_global(err)
        if name is not None:
            raise _refusal(what, path, name, trust_hint) from err
        raise CorruptFileError(f"{what} {path}: not a readable pickle ({_one_line(err)})") from err
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as err:
        raise CorruptFileError(
            f"{what} {path}: truncated or not a pickle ({type(err).__name__}: {_one_line(err)})"
        ) from err


# ------------------------------------------------------------------------------------------ torch files
def _torch_zip_problem(path: Path) -> str | None:
    """Why a torch zip file cannot be complete (truncated: no central directory; no pickle record), or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as err:
        return f"truncated or corrupt ({_one_line(err)})"
    if not any(n.endswith("data.pkl") for n in names):
        return "a zip archive without a torch data.pkl record (not written by torch.save)"
    return None


def _load_torch(path: Path, what: str, allowed_globals: Iterable[Any], trust_hint: str, mmap: bool) -> Any:
    allowed = list(allowed_globals)
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        name = _refused_global(err)
        if name is not None:
            raise _refusal(what, path, name, trust_hint) from err
        raise CorruptFileError(
            f"{what} {path}: corrupt torch file ({_one_line(err.__context__ or err)[:200]})"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CorruptFileError(f"{what} {path}: truncated or corrupt torch file ({_one_line(err)[:200]})") from err


def _load_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CorruptFileError(f"{what} {path}: truncated or corrupt safetensors file ({_one_line(err)})") from err


def _load_trusted(path: Path, fmt: str, what: str) -> Any:
    log.warning("%s %s: unpickling in full (trust_pickle): it may run code stored in the file", what, path)
    if fmt == "pickle":
        with path.open("rb") as f:
            return pickle.load(f)  # noqa: S301 - the user asked for it (--trust-pickle)
    return torch.load(path, map_location="cpu", weights_only=False)  # noqa: S614 - idem


def load_user_file(
    path: str | os.PathLike,
    *,
    what: str = "file",
    trust_pickle: bool | None = None,
    allowed_globals: Iterable[Any] = (),
    trust_hint: str = TRUST_HINT,
    mmap: bool = False,
) -> Any:
    """Read a file the user gave (see the module docstring); tensors land on the CPU.

    Args:
        path: the file.
        what: what the file is, for messages (``"diffusion checkpoint"``, ``"latent statistics"``).
        trust_pickle: unpickle in full (runs code the file names); only when the user asked for it.
            ``None``: as set by :func:`trusting_pickles` (default: no).
        allowed_globals: extra classes/functions ``weights_only`` may build (see ``torch.serialization.safe_globals``;
            a ``(stand_in, "module.Name")`` pair allows a class that is not importable here).
        trust_hint: how the user asks for ``trust_pickle`` where the refusal is reported.
        mmap: memory-map the tensors of a torch zip file (they are read only when used: cheap headers).

    Raises:
        FileNotFoundError: no such file; :class:`UnsafePickleError`: refused objects; :class:`CorruptFileError`:
        empty, truncated or another format. All with one-line messages.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}" + (" (a folder)" if path.is_dir() else ""))
    fmt = file_format(path)
    if fmt == "empty":
        raise CorruptFileError(f"{what} {path}: the file is empty (a copy or download that did not finish?)")
    if fmt == "safetensors":
        return _load_safetensors(path, what)
    if fmt == "unknown":
        raise CorruptFileError(f"{what} {path}: not a PyTorch, safetensors or pickle file (or its start is damaged)")
    if fmt == "torch-zip" and (problem := _torch_zip_problem(path)) is not None:
        raise CorruptFileError(f"{what} {path}: {problem}")
    if _TRUST.get() if trust_pickle is None else trust_pickle:
        return _load_trusted(path, fmt, what)
    if fmt == "pickle":
        return load_plain_pickle(path, what=what, trust_hint=trust_hint)
    return _load_torch(path, what, allowed_globals, trust_hint, mmap and fmt == "torch-zip")
