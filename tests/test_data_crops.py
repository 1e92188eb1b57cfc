"""The three named crops against reference implementations on fixed images.

References: ADM's ``center_crop_arr`` (guided-diffusion, re-typed here), torchvision's
``Resize`` + ``CenterCrop`` on PIL (the official rFID transform), and the official VFM-VAE
``transform_image`` slicing + Lanczos + flip for given crop parameters.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from test_data_helpers import noise_image
from torchvision import transforms

from datamodules.crops import (
    TokenizerTrainParams,
    adm_center_crop,
    apply_tokenizer_train,
    get_crop,
    resize_center_crop,
    sample_tokenizer_train_params,
    tokenizer_train_crop,
)

# (width, height): landscape, portrait, square, exact 2x, large (two BOX halvings), smaller than target.
SIZES = [(451, 300), (389, 517), (256, 256), (512, 700), (1100, 1030), (120, 90), (257, 999)]


def ref_center_crop_arr(pil_image: Image.Image, image_size: int) -> np.ndarray:
    """ADM ``guided_diffusion/image_datasets.py::center_crop_arr``."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return arr[crop_y : crop_y + image_size, crop_x : crop_x + image_size]


def ref_official_crop(img: Image.Image, resolution: int, crop_size: int, top: int, left: int, flip: bool) -> np.ndarray:
    """Official VFM-VAE ``transform_image`` with its random draws given (returns HWC)."""
    arr = np.array(img)[top : top + crop_size, left : left + crop_size]
    arr = np.array(Image.fromarray(arr, "RGB").resize((resolution, resolution), Image.LANCZOS))
    if flip:
        arr = np.ascontiguousarray(np.flip(arr, axis=1))
    return arr


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("target", [64, 256])
def test_adm_center_matches_reference(size, target):
    img = noise_image(*size, seed=sum(size))
    out = adm_center_crop(img, target)
    assert out.shape == (target, target, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, ref_center_crop_arr(img, target))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("target", [64, 256])
def test_resize_center_matches_torchvision(size, target):
    img = noise_image(*size, seed=sum(size) + 1)
    ref = np.array(transforms.Compose([transforms.Resize(target), transforms.CenterCrop(target)])(img))
    out = resize_center_crop(img, target)
    assert out.shape == (target, target, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, ref)


def test_the_two_center_crops_differ():
    # ADM (BOX halving + bicubic) and rFID (bilinear) are different protocols; both must be selectable.
    img = noise_image(1100, 1030, seed=3)
    assert np.abs(adm_center_crop(img, 256).astype(int) - resize_center_crop(img, 256).astype(int)).mean() > 1.0


@pytest.mark.parametrize("size", SIZES)
def test_tokenizer_train_matches_official_for_given_draws(size):
    img = noise_image(*size, seed=7)
    w, h = size
    for crop_size, top, left, flip in [
        (min(w, h), 0, 0, False),
        (min(w, h) // 2, h - min(w, h) // 2, w - min(w, h) // 2, True),
        (int(0.73 * min(w, h)), (h - int(0.73 * min(w, h))) // 3, (w - int(0.73 * min(w, h))) // 2, True),
    ]:
        ours = apply_tokenizer_train(img, 64, TokenizerTrainParams(crop_size, top, left, flip))
        np.testing.assert_array_equal(ours, ref_official_crop(img, 64, crop_size, top, left, flip))


def test_tokenizer_train_draws_follow_the_paper():
    rng = np.random.default_rng(0)
    h, w = 300, 451
    draws = [sample_tokenizer_train_params(h, w, rng) for _ in range(2000)]
    sides = np.array([d.crop_size for d in draws])
    assert sides.min() >= int(0.5 * h) and sides.max() <= h
    # U(0.5, 1) x 300: mean side about 225 (int truncation lowers it by ~0.5).
    assert abs(sides.mean() - 224.5) < 3.0
    assert all(0 <= d.top <= h - d.crop_size and 0 <= d.left <= w - d.crop_size for d in draws)
    assert max(d.left for d in draws) > w - h  # positions span the whole long side
    assert 0.45 < np.mean([d.flip for d in draws]) < 0.55


def test_tokenizer_train_is_deterministic_for_a_generator_seed():
    img = noise_image(200, 150, seed=1)
    a = tokenizer_train_crop(img, 32, np.random.default_rng(5))
    b = tokenizer_train_crop(img, 32, np.random.default_rng(5))
    c = tokenizer_train_crop(img, 32, np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_bad_crop_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="unknown crop 'center'"):
        get_crop("center")
    with pytest.raises(ValueError, match="needs a numpy Generator"):
        tokenizer_train_crop(noise_image(10, 10, 0), 8, None)
    with pytest.raises(ValueError, match="RGB"):
        adm_center_crop(noise_image(10, 10, 0).convert("L"), 8)
    with pytest.raises(ValueError, match="exceeds"):
        apply_tokenizer_train(noise_image(10, 10, 0), 8, TokenizerTrainParams(8, 5, 0, False))
