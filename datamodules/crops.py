"""The three named image crops of the project (docs/design.md, "Crops and resizing").

Every crop maps a decoded RGB ``PIL.Image`` of any size to a square ``uint8`` array of shape
``(size, size, 3)`` (HWC; the dataset turns it into CHW). They are written on PIL, not on tensors,
because the reference implementations they must match are PIL-based.

- ``tokenizer_train``: VFM-VAE training augmentation (paper Sec. 4 / official
  ``training/data_wds.py::transform_image`` with ``data_augmentation: True``): a square crop whose side
  is ``int(U(0.5, 1) * short side)`` at a uniformly random integer position, Lanczos resize to
  ``size``, horizontal flip with p = 0.5.
- ``adm_center``: ADM's ``center_crop_arr`` (guided-diffusion ``image_datasets.py``), used for cached
  diffusion latents and generation reference batches: BOX-halve while the short side is >= 2x the
  target, bicubic resize so the short side equals the target (``round`` on both sides), then a centre
  crop with floor offsets.
- ``resize_center``: ``torchvision`` ``Resize(size)`` on a PIL image (bilinear, PIL's built-in
  antialias; long side ``int(size * long / short)``) followed by ``CenterCrop(size)`` (offsets
  ``int(round((H - size) / 2))``): the paper's rFID protocol (official ``tools/reconstruct``).

Random crops take an explicit ``numpy.random.Generator`` so a sample's crop is a pure function of
(seed, epoch, key), independent of the worker that decodes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

CropFn = Callable[[Image.Image, int, np.random.Generator | None], np.ndarray]

# tokenizer_train draws the crop side as this fraction of the short side (official: random.uniform(0.5, 1.0)).
TOKENIZER_TRAIN_SCALE = (0.5, 1.0)


def _check(img: Image.Image, size: int) -> None:
    if not isinstance(img, Image.Image):
        raise TypeError(f"crops take a PIL.Image, got {type(img).__name__}")
    if img.mode != "RGB":
        raise ValueError(f"crops take RGB images, got mode {img.mode!r}; decode with convert('RGB') first")
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"crop size must be a positive int, got {size!r}")


@dataclass(frozen=True)
class TokenizerTrainParams:
    """One draw of the ``tokenizer_train`` crop: square side, top-left corner, flip."""

    crop_size: int
    top: int
    left: int
    flip: bool


def sample_tokenizer_train_params(height: int, width: int, rng: np.random.Generator) -> TokenizerTrainParams:
    """Draw the crop of ``tokenizer_train`` for an image of ``height x width`` pixels.

    Side = ``max(1, int(U(0.5, 1) * min(H, W)))`` (truncation as in the official code); top and left
    are uniform integers in ``[0, H - side]`` and ``[0, W - side]`` inclusive; flip with p = 0.5.
    """
    ratio = rng.uniform(*TOKENIZER_TRAIN_SCALE)
    crop_size = max(1, int(min(height, width) * ratio))
    top = int(rng.integers(0, height - crop_size, endpoint=True))
    left = int(rng.integers(0, width - crop_size, endpoint=True))
    flip = bool(rng.random() < 0.5)
    return TokenizerTrainParams(crop_size, top, left, flip)


def apply_tokenizer_train(img: Image.Image, size: int, params: TokenizerTrainParams) -> np.ndarray:
    """Crop ``params`` out of ``img``, Lanczos-resize to ``size x size``, flip; returns ``(size, size, 3)`` uint8."""
    _check(img, size)
    box = (params.left, params.top, params.left + params.crop_size, params.top + params.crop_size)
    if box[2] > img.width or box[3] > img.height:
        raise ValueError(f"crop box {box} exceeds the {img.width}x{img.height} image")
    out = img.crop(box).resize((size, size), Image.LANCZOS)
    arr = np.asarray(out, dtype=np.uint8)
    if params.flip:
        arr = arr[:, ::-1]
    return np.ascontiguousarray(arr)


def tokenizer_train_crop(img: Image.Image, size: int, rng: np.random.Generator | None) -> np.ndarray:
    """Random-scale square crop + Lanczos + flip (training augmentation of the tokenizer)."""
    if rng is None:
        raise ValueError("tokenizer_train is a random crop and needs a numpy Generator")
    _check(img, size)
    return apply_tokenizer_train(img, size, sample_tokenizer_train_params(img.height, img.width, rng))


def adm_center_crop(img: Image.Image, size: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """ADM ``center_crop_arr``: BOX-halve, bicubic to the target short side, centre crop."""
    _check(img, size)
    # Halving with BOX first keeps the final bicubic step from aliasing on large images (ADM's reason).
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    arr = np.asarray(img, dtype=np.uint8)
    top = (arr.shape[0] - size) // 2
    left = (arr.shape[1] - size) // 2
    return np.ascontiguousarray(arr[top : top + size, left : left + size])


def resize_center_crop(img: Image.Image, size: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """torchvision ``Resize(size)`` + ``CenterCrop(size)`` on PIL (the rFID evaluation crop)."""
    _check(img, size)
    width, height = img.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    if (new_w, new_h) != (width, height):
        img = img.resize((new_w, new_h), Image.BILINEAR)
    # torchvision rounds the offset (Python's round, i.e. half to even); this differs from ADM's floor.
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    arr = np.asarray(img, dtype=np.uint8)
    return np.ascontiguousarray(arr[top : top + size, left : left + size])


CROPS: dict[str, CropFn] = {
    "tokenizer_train": tokenizer_train_crop,
    "adm_center": adm_center_crop,
    "resize_center": resize_center_crop,
}
# Which crops consume randomness (the dataset only builds a per-sample generator for these).
RANDOM_CROPS = frozenset({"tokenizer_train"})


def get_crop(name: str) -> CropFn:
    """Look up a crop by its name; unknown names list the valid ones."""
    if name not in CROPS:
        raise ValueError(f"unknown crop {name!r}; choose one of {sorted(CROPS)}")
    return CROPS[name]
