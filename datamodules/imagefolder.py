"""ImageFolder source: ``root/<class>/<...>/<key>.<ext>`` trees, read as map-style records.

Class ids are the positions of the class folder names in sorted order, exactly as torchvision's
``ImageFolder`` and as the ``cls`` field of ``timm/imagenet-1k-wds`` (whose ids follow the sorted
ImageNet synsets ``n01440764 ... n15075141``), so both sources label an image identically.

A record's key is the file stem (``n01440764_10026`` for ``n01440764_10026.JPEG``), which equals the
WebDataset ``__key__`` of the same image; keys must therefore be unique across classes.

The source only lists files; decoding happens in the mode that consumes the records
(``datamodules/image_mode.py`` for images, a latent mode later), so the same index serves both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Same extension set as torchvision's IMG_EXTENSIONS; matched case-insensitively.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class ImageRecord:
    """One undecoded sample: ``data`` is a file path (ImageFolder) or the encoded bytes (WebDataset)."""

    key: str
    label: int
    data: str | bytes


def find_classes(root: str | Path) -> list[str]:
    """Sorted class sub-folder names of ``root``; a missing or class-less root is an error naming it."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"ImageFolder root does not exist: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"ImageFolder root is not a directory: {root}")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise FileNotFoundError(f"ImageFolder root {root} has no class sub-folders (expected root/<class>/<image>)")
    return classes


def _list_images(class_dir: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath, f) for f in filenames if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")]
    return sorted(found)


class ImageFolderSource:
    """Index of an ImageFolder split: ``len()`` records, ``source[i] -> ImageRecord`` (path, not decoded).

    Args:
        root: the split folder, e.g. ``/data/imagenet/train``.
        keep_keys: optional key set (see ``key_filter.py``); files whose stem is not in it are left out.
        classes: optional fixed class list (e.g. the train split's), so a split that lacks some classes
            keeps the ids of the full list; folders outside it are an error.
    """

    def __init__(self, root: str | Path, keep_keys: frozenset[str] | None = None, classes: list[str] | None = None):
        self.root = Path(root)
        found = find_classes(self.root)
        if classes is not None:
            unknown = sorted(set(found) - set(classes))
            if unknown:
                raise ValueError(f"{self.root} has class folders not in the given class list: {unknown[:10]}")
        self.classes = list(classes) if classes is not None else found
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.num_total = 0
        rel_paths: list[str] = []
        labels: list[int] = []
        first_seen: dict[str, str] = {}
        for name in found:
            for path in _list_images(self.root / name):
                key = path.stem
                if key in first_seen:
                    raise ValueError(
                        f"duplicate key {key!r} in {self.root}: {first_seen[key]} and {path}; "
                        "keys are file stems and must be unique across classes"
                    )
                first_seen[key] = name
                self.num_total += 1
                if keep_keys is None or key in keep_keys:
                    rel_paths.append(str(path.relative_to(self.root)))
                    labels.append(self.class_to_idx[name])
        if self.num_total == 0:
            raise FileNotFoundError(f"no images with extensions {IMAGE_EXTENSIONS} under {self.root}")
        if not rel_paths:
            raise ValueError(f"the key filter removed all {self.num_total} images of {self.root}: empty split")
        # Numpy arrays instead of a list of Python strings: dataloader workers forked from this process
        # would otherwise copy the whole index (reference counts touch every object's page).
        self._paths = np.array([p.encode("utf-8") for p in rel_paths], dtype=np.bytes_)
        self._labels = np.asarray(labels, dtype=np.int32)

    def __len__(self) -> int:
        return len(self._labels)

    def _rel_path(self, index: int) -> str:
        return self._paths[index].decode("utf-8")

    def __getitem__(self, index: int) -> ImageRecord:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images in {self.root}")
        rel = self._rel_path(index)
        return ImageRecord(key=Path(rel).stem, label=int(self._labels[index]), data=str(self.root / rel))

    @property
    def keys(self) -> list[str]:
        return [Path(self._rel_path(i)).stem for i in range(len(self))]
