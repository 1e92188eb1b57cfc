"""The one float-to-uint8 conversion (`vfmvae.codec.to_uint8`) against the official paths and by hand."""

import numpy as np
import pytest
import torch
from torchvision.transforms.functional import to_pil_image

from vfmvae.codec import to_uint8, uint8_to_signed, uint8_to_unit


def test_truncate_matches_torchvision_to_pil_image_the_official_tools_path():
    torch.manual_seed(0)
    decoded = torch.randn(4, 3, 16, 16) * 0.7  # decoder output, nominally [-1, 1], some values outside
    ours = to_uint8(decoded, "truncate")
    for i in range(decoded.shape[0]):
        # tools/decode and tools/reconstruct: clamp((x + 1) / 2, 0, 1) then `to_pil_image`
        official = np.asarray(to_pil_image(((decoded[i] + 1) / 2).clamp(0, 1)))
        assert np.array_equal(ours[i].permute(1, 2, 0).numpy(), official)


@pytest.mark.parametrize(
    ("unit_value", "truncate", "round_", "half_up"),
    [
        (0.999, 254, 255, 255),  # 254.745
        (0.5, 127, 128, 128),  # 127.5: truncation drops it, round-half-even gives 128, half-up 128
        (-0.2, 0, 0, 0),  # clamped
        (1.3, 255, 255, 255),  # clamped
        (0.0, 0, 0, 0),
        (1.0, 255, 255, 255),
        (0.1, 25, 26, 26),  # 25.5
    ],
)
def test_hand_computed_values(unit_value, truncate, round_, half_up):
    unit = torch.full((1, 3, 1, 1), unit_value, dtype=torch.float64).float()
    assert to_uint8(unit, "truncate", value_range="unit").flatten()[0].item() == truncate
    assert to_uint8(unit, "round", value_range="unit").flatten()[0].item() == round_
    assert to_uint8(unit, "half_up", value_range="unit").flatten()[0].item() == half_up
    # The same pixel given in [-1, 1]
    signed = unit * 2 - 1
    assert to_uint8(signed, "truncate").flatten()[0].item() == truncate


def test_truncate_is_about_half_a_grey_level_darker_than_round():
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    diff = to_uint8(x, "round").float() - to_uint8(x, "truncate").float()
    assert set(diff.unique().tolist()) <= {0.0, 1.0}
    assert 0.4 < diff.mean().item() < 0.6


def test_half_up_is_lightningdit_vavae_conversion():
    x = torch.linspace(-1.1, 1.1, 1001).view(1, 1, 1, -1)
    official = torch.clamp(127.5 * x + 128.0, 0, 255).to(torch.uint8)  # VA_VAE.decode_to_images
    assert torch.equal(to_uint8(x, "half_up"), official)


def test_unknown_mode_and_range_are_named():
    with pytest.raises(ValueError, match="unknown uint8 conversion mode 'floor'"):
        to_uint8(torch.zeros(1, 3, 1, 1), "floor")
    with pytest.raises(ValueError, match="value_range"):
        to_uint8(torch.zeros(1, 3, 1, 1), "round", value_range="0-255")


def test_uint8_to_float_ranges():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8)
    assert torch.allclose(uint8_to_unit(x), torch.tensor([0.0, 0.2, 1.0]))
    assert torch.allclose(uint8_to_signed(x), torch.tensor([-1.0, 51 / 127.5 - 1, 1.0]))
    with pytest.raises(TypeError):
        uint8_to_unit(x.float())
