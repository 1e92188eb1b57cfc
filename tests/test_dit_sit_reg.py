"""REG SiT against the official fixture (`sit_reg_tiny.*`), parameter counts, switches."""

from __future__ import annotations

import pytest
import torch
from conftest import official_fixtures

from vfmvae.dit import SIT_REG_PRESETS, REGOutput, build_sit_reg, from_official_reg

ATOL = dict(atol=1e-5, rtol=0)


official, model = official_fixtures(
    "sit_reg_tiny", lambda meta, sd: from_official_reg(sd, meta["constructor_kwargs"]), "official"
)


def _inputs(T):
    return T["inputs.x"], T["inputs.t"], T["inputs.y"], T["inputs.cls_token"]


def test_forward_projector_cls_and_blocks_match_official(official, model):
    T, _, _ = official
    with torch.no_grad():
        (velocity, zs, cls_velocity), hidden = model(*_inputs(T), return_hidden=[0, 1, -1])
    assert sorted(hidden) == [0, 1, 2]
    for i, value in hidden.items():
        torch.testing.assert_close(value, T[f"intermediates.block_{i}"], **ATOL, msg=f"block_{i}")
    torch.testing.assert_close(velocity, T["outputs.velocity"], **ATOL)
    assert len(zs) == 1
    torch.testing.assert_close(zs[0], T["outputs.projector_0"], **ATOL)
    torch.testing.assert_close(cls_velocity, T["outputs.cls_velocity"], **ATOL)
    assert T["outputs.cls_velocity"].abs().max() > 1e-2  # the class head is not trivially zero


def test_output_is_a_named_tuple_that_unpacks_like_official(official, model):
    T, _, _ = official
    with torch.no_grad():
        out = model(*_inputs(T))
    assert isinstance(out, REGOutput)
    v, zs, cls_v = out
    assert v is out.velocity and zs is out.projections and cls_v is out.cls_velocity


def test_position_table_equals_stored_official_one(official, model):
    _, _, state = official
    torch.testing.assert_close(model.pos_embed, state["pos_embed"], atol=1e-6, rtol=0)
    assert model.pos_embed[0, 0].abs().max() == 0  # zero row for the class token


def test_class_token_changes_the_patch_velocity(official, model):
    T, _, _ = official
    x, t, y, cls = _inputs(T)
    with torch.no_grad():
        a = model(x, t, y, cls).velocity
        b = model(x, t, y, cls + 1.0).velocity
    assert (a - b).abs().max() > 1e-4


def _trainable(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_xl1_parameter_counts_on_meta():
    with torch.device("meta"):
        model = build_sit_reg("SiT-XL/1-REG")
    assert _trainable(model) == 684_766_240
    projector = _trainable(model.projectors)
    # 1152*2048 + 2048 + 2048*2048 + 2048 + 2048*768 + 768, i.e. 8.13 M
    # (docs/design.md, "Diffusion networks and the network interface").
    assert projector == 1152 * 2048 + 2048 + 2048 * 2048 + 2048 + 2048 * 768 + 768 == 8_131_328


def _independent_param_count(cfg) -> int:
    D, hd, p, C, z = cfg.hidden_size, cfg.hidden_size // cfg.num_heads, cfg.patch_size, cfg.in_channels, cfg.z_dims[0]
    H, P = int(D * cfg.mlp_ratio), cfg.projector_dim
    block = (
        (3 * D * D + 3 * D)
        + (4 * hd if cfg.qk_norm else 0)
        + (D * D + D)
        + (D * H + H + H * D + D)
        + (6 * D * D + 6 * D)
    )
    embed = C * p * p * D + D + (256 * D + D) + (D * D + D) + (cfg.num_classes + 1) * D
    cls_in = z * D + D + 2 * D
    projector = D * P + P + P * P + P + P * z + z
    final = (D * p * p * C + p * p * C) + (D * z + z) + (2 * D * D + 2 * D)
    return embed + cls_in + cfg.depth * block + projector + final


@pytest.mark.parametrize("preset", sorted(SIT_REG_PRESETS))
def test_every_preset_builds_on_meta_with_expected_size(preset):
    with torch.device("meta"):
        model = build_sit_reg(preset)
    assert _trainable(model) == _independent_param_count(model.config)


def test_activation_checkpointing_gives_identical_gradients(official, model):
    T, _, _ = official
    grads = []
    for flag in (False, True):
        model.activation_checkpointing = flag
        model.zero_grad()
        out = model(*_inputs(T))
        (
            out.velocity.square().mean() + out.projections[0].square().mean() + out.cls_velocity.square().mean()
        ).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    model.activation_checkpointing = False
    model.zero_grad()
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_zero_init_heads_output_zero():
    model = build_sit_reg("debug").eval()
    c = model.config
    x = torch.randn(2, c.in_channels, c.input_size, c.input_size)
    with torch.no_grad():
        out = model(x, torch.rand(2), torch.tensor([0, 1000]), torch.randn(2, c.cls_token_dim))
    assert out.velocity.abs().max() == 0 and out.cls_velocity.abs().max() == 0
    assert out.projections[0].shape == (2, 1 + c.input_size**2, c.z_dims[0])


def test_missing_or_misshaped_cls_token_raises(official, model):
    T, _, _ = official
    x, t, y, cls = _inputs(T)
    with pytest.raises(ValueError, match="needs cls_token"):
        model(x, t, y, None)
    with pytest.raises(ValueError, match="cls_token must have shape"):
        model(x, t, y, cls[:, :-1])


def test_bad_config_raises():
    with pytest.raises(ValueError, match="encoder_depth"):
        build_sit_reg("debug", encoder_depth=4)
    with pytest.raises(KeyError, match="unknown REG SiT preset"):
        build_sit_reg("SiT-XL/1")
