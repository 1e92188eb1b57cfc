"""Embedded demo dataset: random crops of the photographs that ship inside installed wheels.

No download is needed: the photographs come with scikit-image, scikit-learn and matplotlib
(docs/demo_data.md). Each photograph is one class (15 classes, ids in sorted name order); a sample is a
random square crop (side ``U(min_crop_fraction, 1)`` x the photo's short side, random position),
Lanczos-resized to ``resolution`` px. Sample ``i`` of a split is a pure function of ``(seed, i)``:
class ``i % 15`` and a crop drawn from ``np.random.default_rng([seed, i])``, so the dataset is
deterministic, of any size and any resolution. :func:`write_demo_imagefolder` writes it as an ImageFolder
tree so demos and tests exercise the real ImageFolder path. Sources and licences: ``docs/demo_data.md``.

Only photographs whose package documents a licence that allows redistribution are used (public
domain, CC0, "no known copyright restrictions", CC BY 2.0); ``moon`` and ``motorcycle`` are left out
because their licences are not documented in the package.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def _sklearn(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(name)

    return load


def _matplotlib(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from matplotlib import cbook

        with cbook.get_sample_data(name) as f:
            return np.asarray(Image.open(f).convert("RGB"))

    return load


# class name -> loader. Class ids are positions in sorted(PHOTOS), like an ImageFolder tree.
PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage("astronaut"),
    "brick": _skimage("brick"),
    "camera": _skimage("camera"),
    "chelsea": _skimage("chelsea"),
    "china": _sklearn("china.jpg"),
    "coffee": _skimage("coffee"),
    "coins": _skimage("coins"),
    "flower": _sklearn("flower.jpg"),
    "grace_hopper": _matplotlib("grace_hopper.jpg"),
    "grass": _skimage("grass"),
    "gravel": _skimage("gravel"),
    "hubble_deep_field": _skimage("hubble_deep_field"),
    "immunohistochemistry": _skimage("immunohistochemistry"),
    "retina": _skimage("retina"),
    "rocket": _skimage("rocket"),
}
DEMO_CLASSES: tuple[str, ...] = tuple(sorted(PHOTOS))


@cache
def load_photo(name: str) -> np.ndarray:
    """The photograph ``name`` as ``uint8 (H, W, 3)``; grey photographs are replicated to RGB."""
    if name not in PHOTOS:
        raise ValueError(f"unknown demo photograph {name!r}; choose one of {list(DEMO_CLASSES)}")
    arr = np.asarray(PHOTOS[name]())
    if arr.dtype != np.uint8:
        raise TypeError(f"demo photograph {name!r} loaded as {arr.dtype}, expected uint8")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    arr = np.ascontiguousarray(arr[:, :, :3])
    arr.setflags(write=False)  # shared by the cache
    return arr


@dataclass(frozen=True)
class DemoDataConfig:
    """Size of the demo dataset. ``num_per_class`` samples per class and split, ``resolution`` px squares."""

    resolution: int = 128
    num_per_class: int = 8
    seed: int = 0
    min_crop_fraction: float = 0.3

    def __post_init__(self) -> None:
        if self.resolution < 1 or self.num_per_class < 1:
            raise ValueError(
                f"demo resolution and num_per_class must be >= 1, got {self.resolution}, {self.num_per_class}"
            )
        if not 0.0 < self.min_crop_fraction <= 1.0:
            raise ValueError(f"min_crop_fraction must be in (0, 1], got {self.min_crop_fraction}")


def demo_sample(index: int, config: DemoDataConfig) -> tuple[np.ndarray, int, str]:
    """Sample ``index``: ``(uint8 (R, R, 3), label, key)``; deterministic in ``(config.seed, index)``."""
    if index < 0:
        raise IndexError(f"demo index must be >= 0, got {index}")
    label = index % len(DEMO_CLASSES)
    name = DEMO_CLASSES[label]
    photo = load_photo(name)
    height, width = photo.shape[:2]
    rng = np.random.default_rng([config.seed, index])
    side = max(1, int(min(height, width) * rng.uniform(config.min_crop_fraction, 1.0)))
    top = int(rng.integers(0, height - side, endpoint=True))
    left = int(rng.integers(0, width - side, endpoint=True))
    crop = Image.fromarray(photo[top : top + side, left : left + side])
    image = np.asarray(crop.resize((config.resolution, config.resolution), Image.LANCZOS), dtype=np.uint8)
    return image, label, f"demo{config.seed}_{name}_{index:06d}"  # seed in the key: splits differ


class DemoPhotoDataset(Dataset):
    """In-memory demo split: ``len = num_per_class * 15``; items like the DataModule's samples.

    Item: ``{"image": uint8 (3, R, R), "label": int, "key": str}``.
    """

    def __init__(self, config: DemoDataConfig | None = None):
        self.config = config or DemoDataConfig()
        self.classes = list(DEMO_CLASSES)

    def __len__(self) -> int:
        return self.config.num_per_class * len(DEMO_CLASSES)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"demo index {index} out of range [0, {len(self)})")
        image, label, key = demo_sample(index, self.config)
        return {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), "label": label, "key": key}


MANIFEST = "demo_manifest.json"


def write_demo_imagefolder(root: str | Path, config: DemoDataConfig | None = None) -> int:
    """Write the demo split as ``root/<class>/<key>.png``; returns the number of images written.

    A manifest records the config; an existing tree with the same manifest is left as it is, a
    non-empty folder without it (or with another config) is an error rather than being overwritten.
    """
    config = config or DemoDataConfig()
    root = Path(root)
    manifest = {"kind": "vfmvae-demo-imagefolder", "config": asdict(config), "classes": list(DEMO_CLASSES)}
    if (root / MANIFEST).is_file():
        if json.loads((root / MANIFEST).read_text()) == manifest:
            return 0
        raise FileExistsError(f"{root} holds a demo tree written with another config; delete it to rewrite")
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"refusing to write the demo dataset into non-empty {root}")
    for name in DEMO_CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
    dataset = DemoPhotoDataset(config)
    for index in range(len(dataset)):
        image, label, key = demo_sample(index, config)
        Image.fromarray(image).save(root / DEMO_CLASSES[label] / f"{key}.png")
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return len(dataset)


def read_demo_split(root: str | Path, crop: str, resolution: int, indices: Iterable[int] | None = None) -> np.ndarray:
    """uint8 ``(N, R, R, 3)`` images of an ImageFolder split written by :func:`write_demo_imagefolder` (all, or
    those at ``indices`` in the folder's sorted order), each cropped with a named crop of `datamodules.crops`."""
    from datamodules.crops import get_crop
    from datamodules.decoding import decode_rgb
    from datamodules.imagefolder import ImageFolderSource

    source = ImageFolderSource(str(root))
    fn = get_crop(crop)
    indices = range(len(source)) if indices is None else indices
    return np.stack([fn(decode_rgb(source[i].data), resolution) for i in indices])


def main(argv: list[str] | None = None) -> None:
    """``python -m datamodules.demo_data ROOT [--resolution R] [--num-per-class N] [--seed S]``."""
    import argparse

    p = argparse.ArgumentParser(description="Write the embedded demo dataset as an ImageFolder tree.")
    p.add_argument("root", help="output folder (becomes root/<class>/<key>.png)")
    p.add_argument("--resolution", type=int, default=DemoDataConfig.resolution)
    p.add_argument("--num-per-class", type=int, default=DemoDataConfig.num_per_class)
    p.add_argument("--seed", type=int, default=DemoDataConfig.seed)
    args = p.parse_args(argv)
    cfg = DemoDataConfig(resolution=args.resolution, num_per_class=args.num_per_class, seed=args.seed)
    written = write_demo_imagefolder(args.root, cfg)
    print(
        f"wrote {written} images ({len(DEMO_CLASSES)} classes) to {args.root}"
        if written
        else f"{args.root} is up to date"
    )


if __name__ == "__main__":
    main()
