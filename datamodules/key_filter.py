"""Key lists that restrict a split to chosen images (the paper's short side >= 256 px filter).

The paper trains the tokenizer only on ImageNet images whose shorter side is at least 256 px
(docs/design.md, "Tokenizer stages and losses"; official ``imagenet_info/imagenet_train_hr_256_indices.pkl``, which is not in the
public repository). The official file is a pickled collection of WebDataset ``__key__`` strings
(``training/data_wds.py::filter_by_filename``). A key is the file stem (``n01440764_10026``,
``ILSVRC2012_val_00000001``), which is the same in the ImageFolder tree and in the
``timm/imagenet-1k-wds`` shards, so one list serves both sources.

Two formats are read and written, chosen by extension:
- ``.txt``: one key per line (``#`` comments and blank lines ignored) - the project's format;
- ``.pkl`` / ``.pickle``: a pickled list/set/tuple of ``str`` keys - the official format (the official loader
  reads it with ``set(pickle.load(f))``). It is read without running code from the file
  (`vfmvae.utils.safe_load.load_plain_pickle`: strings, numbers and containers only).
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from pathlib import Path

from vfmvae.utils.safe_load import load_plain_pickle

PICKLE_SUFFIXES = (".pkl", ".pickle")


def load_key_list(path: str | Path) -> frozenset[str]:
    """Read a key list (``.txt`` or official ``.pkl``); errors name the path and the problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"filter key list not found: {path}")
    if path.suffix in PICKLE_SUFFIXES:
        obj = load_plain_pickle(path, what="filter key list")
        if isinstance(obj, dict):
            obj = obj.keys()
        if isinstance(obj, (str, bytes)) or not hasattr(obj, "__iter__"):
            raise ValueError(f"{path}: expected a pickled list/set of keys, got {type(obj).__name__}")
        keys = [k.decode() if isinstance(k, bytes) else k for k in obj]
        bad = [k for k in keys if not isinstance(k, str)]
        if bad:
            raise ValueError(f"{path}: keys must be strings, found {type(bad[0]).__name__} (e.g. {bad[0]!r})")
    else:
        lines = path.read_text(encoding="utf-8").splitlines()
        keys = [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]
    if not keys:
        raise ValueError(f"filter key list {path} is empty: it would remove every image")
    return frozenset(keys)


def save_key_list(keys: Iterable[str], path: str | Path) -> Path:
    """Write keys (sorted, deduplicated) as ``.txt`` or ``.pkl`` by extension; atomic via rename."""
    path = Path(path)
    keys = sorted(set(keys))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix in PICKLE_SUFFIXES:
        with tmp.open("wb") as f:
            pickle.dump(keys, f)
    else:
        tmp.write_text("".join(k + "\n" for k in keys), encoding="utf-8")
    tmp.replace(path)
    return path
