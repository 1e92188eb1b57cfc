"""Official-checkpoint converters: wrapped files, EMA preference, strict key accounting."""

from __future__ import annotations

import argparse

import pytest
import torch
from conftest import official_fixture

from vfmvae.dit import LightningDiT, SiTREG, from_official_lightningdit, from_official_reg, unwrap_checkpoint

ATOL = dict(atol=1e-5, rtol=0)


def _load(fixtures_dir, name):
    tensors, meta, state = official_fixture(name)
    return tensors, meta["constructor_kwargs"], state


def test_released_reg_checkpoint_layout_uses_ema_weights(fixtures_dir, tmp_path):
    T, kwargs, state = _load(fixtures_dir, "sit_reg_tiny")
    # The REG train.py layout: raw weights, EMA weights, optimiser, argparse args, step count.
    ckpt = {
        "model": {k: torch.zeros_like(v) for k, v in state.items()},
        "ema": {f"module.{k}": v for k, v in state.items()},  # DDP prefix must be stripped
        "opt": {},
        "args": argparse.Namespace(model="SiT-XL/1", cls=0.03),
        "steps": 100,
    }
    path = tmp_path / "0100000.pt"
    torch.save(ckpt, path)
    model = from_official_reg(path, kwargs)
    with torch.no_grad():
        out = model(T["inputs.x"], T["inputs.t"], T["inputs.y"], T["inputs.cls_token"])
    torch.testing.assert_close(out.velocity, T["outputs.velocity"], **ATOL)
    assert not model.training


def test_lightningdit_checkpoint_dict_and_model_preference(fixtures_dir):
    T, kwargs, state = _load(fixtures_dir, "lightningdit_tiny")
    ckpt = {"model": {f"_orig_mod.{k}": v * 0 for k, v in state.items()}, "ema": state}
    model = from_official_lightningdit(ckpt, kwargs)
    with torch.no_grad():
        torch.testing.assert_close(model(T["inputs.x"], T["inputs.t"], T["inputs.y"]), T["outputs.forward"], **ATOL)
    raw = unwrap_checkpoint(ckpt, prefer="model")
    assert set(raw) == set(state) and all(v.abs().max() == 0 for v in raw.values())


def test_safetensors_file_is_accepted(fixtures_dir, tmp_path):
    from safetensors.torch import save_file

    T, kwargs, state = _load(fixtures_dir, "lightningdit_tiny")
    path = tmp_path / "ema.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model = from_official_lightningdit(path, kwargs)
    with torch.no_grad():
        torch.testing.assert_close(model(T["inputs.x"], T["inputs.t"], T["inputs.y"]), T["outputs.forward"], **ATOL)


def test_unknown_and_missing_keys_are_listed(fixtures_dir):
    _, kwargs, state = _load(fixtures_dir, "lightningdit_tiny")
    extra = dict(state, **{"blocks.0.attn.bogus": torch.zeros(1)})
    with pytest.raises(KeyError, match="blocks.0.attn.bogus"):
        from_official_lightningdit(extra, kwargs)
    short = {k: v for k, v in state.items() if k != "final_layer.linear.bias"}
    with pytest.raises(KeyError, match="final_layer.linear.bias"):
        from_official_lightningdit(short, kwargs)


def test_kwargs_mismatches_are_errors(fixtures_dir):
    _, kwargs, state = _load(fixtures_dir, "lightningdit_tiny")
    with pytest.raises(ValueError, match="unknown official LightningDiT kwargs"):
        from_official_lightningdit(state, dict(kwargs, use_flash=True))
    # Turning RoPE off leaves its stored tables unaccounted for.
    with pytest.raises(KeyError, match="feat_rope.freqs_cos"):
        from_official_lightningdit(state, dict(kwargs, use_rope=False))
    # A wrong input size changes the stored position table's shape.
    with pytest.raises(ValueError, match="pos_embed.*has shape"):
        from_official_lightningdit(state, dict(kwargs, input_size=4))
    _, reg_kwargs, reg_state = _load(fixtures_dir, "sit_reg_tiny")
    with pytest.raises(ValueError, match="decoder_hidden_size"):
        from_official_reg(reg_state, dict(reg_kwargs, decoder_hidden_size=32))


def test_official_defaults_apply_to_omitted_kwargs(fixtures_dir):
    _, kwargs, state = _load(fixtures_dir, "sit_reg_tiny")
    # Official REG default qk_norm is False: dropping the kwarg must leave q/k norm keys unknown.
    without = {k: v for k, v in kwargs.items() if k != "qk_norm"}
    with pytest.raises(KeyError, match="q_norm"):
        from_official_reg(state, without)


def test_non_tensor_entries_and_bad_types_raise():
    with pytest.raises(TypeError, match="not a tensor"):
        unwrap_checkpoint({"ema": {"a": 1}})
    with pytest.raises(TypeError, match="expected a state dict"):
        unwrap_checkpoint(42)
    with pytest.raises(FileNotFoundError):
        unwrap_checkpoint("/nonexistent/ckpt.pt")


# fixture -> (converter, class, official velocity of the fixture's inputs, the fixture's output key)
META_BUILD = {
    "lightningdit_tiny": (
        from_official_lightningdit,
        LightningDiT,
        lambda m, T: m(T["inputs.x"], T["inputs.t"], T["inputs.y"]),
        "outputs.forward",
    ),
    "sit_reg_tiny": (
        from_official_reg,
        SiTREG,
        lambda m, T: m(T["inputs.x"], T["inputs.t"], T["inputs.y"], T["inputs.cls_token"]).velocity,
        "outputs.velocity",
    ),
}


@pytest.mark.parametrize("name", sorted(META_BUILD))
def test_meta_build_to_empty_reset_buffers_then_load(fixtures_dir, name):
    """A `meta` build (how FSDP2 runs build the network) materialised with `to_empty` and `reset_buffers` takes the
    converted weights and gives the official output: the non-persistent tables are rebuilt, not left empty."""
    convert, cls, forward, key = META_BUILD[name]
    T, kwargs, state = _load(fixtures_dir, name)
    reference = convert(state, kwargs)
    with torch.device("meta"):
        model = cls(reference.config)
    model.to_empty(device="cpu")
    model.reset_buffers()
    model.load_state_dict(reference.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(forward(model.eval(), T), T[key], **ATOL)
