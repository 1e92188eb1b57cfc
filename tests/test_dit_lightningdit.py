"""LightningDiT against the official fixture (`lightningdit_tiny.*`), parameter counts, switches."""

from __future__ import annotations

import pytest
import torch
from conftest import official_fixtures

from vfmvae.dit import LIGHTNINGDIT_PRESETS, build_lightningdit, from_official_lightningdit

ATOL = dict(atol=1e-5, rtol=0)


official, model = official_fixtures(
    "lightningdit_tiny", lambda meta, sd: from_official_lightningdit(sd, meta["constructor_kwargs"]), "official"
)


def test_forward_and_every_intermediate_match_official(official, model):
    T, _, _ = official
    captured = {}
    hooks = [
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: captured.__setitem__(name, o))
        for name in ("x_embedder", "t_embedder", "y_embedder", "final_layer")
    ]
    try:
        with torch.no_grad():
            out, hidden = model(T["inputs.x"], T["inputs.t"], T["inputs.y"], return_hidden=range(model.config.depth))
    finally:
        for h in hooks:
            h.remove()
    for name, value in captured.items():
        torch.testing.assert_close(value, T[f"intermediates.{name}"], **ATOL, msg=name)
    assert sorted(hidden) == [0, 1]
    for i, value in hidden.items():
        torch.testing.assert_close(value, T[f"intermediates.block_{i}"], **ATOL, msg=f"block_{i}")
    torch.testing.assert_close(out, T["outputs.forward"], **ATOL)
    # The conditioning must matter, or the comparison above proves little.
    assert (T["outputs.forward"][0] - T["outputs.forward"][1]).abs().max() > 1e-2


def test_fixed_tables_equal_the_stored_official_ones(official, model):
    _, _, state = official
    torch.testing.assert_close(model.pos_embed, state["pos_embed"], atol=1e-6, rtol=0)
    torch.testing.assert_close(model.feat_rope.freqs_cos, state["feat_rope.freqs_cos"], atol=1e-6, rtol=0)
    torch.testing.assert_close(model.feat_rope.freqs_sin, state["feat_rope.freqs_sin"], atol=1e-6, rtol=0)


def _official_forward_with_cfg(model, x, t, y, scale, cfg_interval=None, cfg_interval_start=None):
    """Test-side restatement of the official quirk: guidance on channels 0-2 only
    (docs/design.md, "Sampling and guidance")."""
    half = x[: len(x) // 2]
    out = model(torch.cat([half, half]), t, y)
    eps, rest = out[:, :3], out[:, 3:]
    cond, uncond = eps.chunk(2)
    guided = uncond + scale * (cond - uncond)
    if cfg_interval is True and t[0] < cfg_interval_start:
        guided = cond
    return torch.cat([torch.cat([guided, guided]), rest], dim=1)


@pytest.mark.parametrize("tag", ["t0p5", "t0p05"])
@pytest.mark.parametrize("interval", [True, False])
def test_official_cfg_semantics_reproducible_from_forward(official, model, tag, interval):
    T, meta, _ = official
    kw = dict(cfg_interval=True, cfg_interval_start=meta["cfg_interval_start"]) if interval else {}
    with torch.no_grad():
        out = _official_forward_with_cfg(
            model, T["inputs.cfg_x"], T[f"inputs.cfg_t_{tag}"], T["inputs.cfg_y"], meta["cfg_scale"], **kw
        )
    name = f"outputs.forward_with_cfg_{'interval' if interval else 'nointerval'}_{tag}"
    torch.testing.assert_close(out, T[name], **ATOL)


def _independent_param_count(cfg) -> int:
    """Closed-form trainable-parameter count of a LightningDiT config (SwiGLU/RMSNorm/QK-norm on)."""
    D, hd, p = cfg.hidden_size, cfg.head_dim, cfg.patch_size
    H = int(2 / 3 * int(D * cfg.mlp_ratio))
    block = (3 * D * D + 3 * D) + 2 * hd + (D * D + D) + 2 * D + (D * 2 * H + 2 * H) + (H * D + D) + (6 * D * D + 6 * D)
    embed = cfg.in_channels * p * p * D + D + (256 * D + D) + (D * D + D) + (cfg.num_classes + 1) * D
    final = D + (D * p * p * cfg.in_channels + p * p * cfg.in_channels) + (2 * D * D + 2 * D)
    return embed + cfg.depth * block + final


def _trainable(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_xl1_parameter_count_on_meta():
    with torch.device("meta"):
        model = build_lightningdit("LightningDiT-XL/1")
    assert (model.config.in_channels, model.config.input_size) == (32, 16)
    assert _trainable(model) == 674_965_856
    # 675.26 M including the frozen position table (docs/design.md, "Diffusion networks and the network interface").
    assert _trainable(model) + model.pos_embed.numel() == 675_260_768


@pytest.mark.parametrize("preset", sorted(LIGHTNINGDIT_PRESETS))
def test_every_preset_builds_on_meta_with_expected_size(preset):
    with torch.device("meta"):
        model = build_lightningdit(preset)
    assert _trainable(model) == _independent_param_count(model.config)
    assert len(model.blocks) == model.config.depth


def _debug_batch(model, batch=2):
    g = torch.Generator().manual_seed(0)
    c = model.config
    x = torch.randn(batch, c.in_channels, c.input_size, c.input_size, generator=g)
    return x, torch.rand(batch, generator=g), torch.tensor([3, 1000][:batch])


def test_activation_checkpointing_gives_identical_gradients(model):
    x, t, y = _debug_batch(model)
    grads = []
    for flag in (False, True):
        model.activation_checkpointing = flag
        model.zero_grad()
        model(x, t, y).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    model.activation_checkpointing = False
    model.zero_grad()
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_compile_blocks_keeps_names_and_numbers(official):
    T, meta, state = official
    model = from_official_lightningdit(state, meta["constructor_kwargs"])
    keys = list(model.state_dict())
    model.compile_blocks(backend="eager")  # eager backend: exercises dynamo without a C++ toolchain
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(model(T["inputs.x"], T["inputs.t"], T["inputs.y"]), T["outputs.forward"], **ATOL)


def test_label_dropout_only_in_training():
    model = build_lightningdit("debug", class_dropout_prob=0.5)
    table = model.y_embedder.embedding_table.weight
    y = torch.full((64,), 7)
    torch.manual_seed(0)
    model.train()
    emb = model.y_embedder(y)
    is_null = (emb == table[1000]).all(-1)
    is_label = (emb == table[7]).all(-1)
    assert bool((is_null | is_label).all()) and 10 < int(is_null.sum()) < 54
    model.eval()
    assert (model.y_embedder(y) == table[7]).all()
    forced = model.y_embedder(y, force_drop_ids=torch.ones(64, dtype=torch.long))
    assert (forced == table[1000]).all()


def test_zero_init_outputs_zero():
    model = build_lightningdit("debug").eval()
    x, t, y = _debug_batch(model)
    with torch.no_grad():
        assert model(x, t, y).abs().max() == 0  # adaLN-Zero + zeroed head: the output is zero at initialisation


def test_scalar_time_is_broadcast(model):
    x, _, y = _debug_batch(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x, torch.tensor(0.3), y), model(x, torch.full((2,), 0.3), y))


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(x=torch.zeros(2, 4, 8, 8)), "expected latents of shape"),
        (dict(y=torch.tensor([0, 1001])), "class ids must lie"),
        (dict(y=torch.tensor([0.0, 1.0])), "integer class ids"),
        (dict(t=torch.zeros(3)), "t and y must have shape"),
        (dict(return_hidden=[5]), "out of range"),
    ],
)
def test_bad_inputs_raise_clear_errors(model, bad, match):
    x, t, y = _debug_batch(model)
    args = dict(x=x, t=t, y=y)
    hidden = bad.pop("return_hidden", None)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        model(args["x"], args["t"], args["y"], return_hidden=hidden)


def test_bad_config_and_preset_raise():
    with pytest.raises(KeyError, match="unknown LightningDiT preset"):
        build_lightningdit("LightningDiT-XXL/1")
    with pytest.raises(ValueError, match="divisible by patch_size"):
        build_lightningdit("debug", patch_size=3)
    with pytest.raises(ValueError, match="num_heads"):
        build_lightningdit("debug", num_heads=5)
