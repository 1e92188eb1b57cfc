"""EMA (vfmvae/utils/ema.py) against hand computations of the StyleGAN / LightningDiT rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vfmvae.utils.ema import EMA, EMA_PRESETS, EMAConfig, ema_beta


class Gen(nn.Module):
    """A 'tokenizer' with a trainable decoder, a BatchNorm buffer and a frozen 'VFM'."""

    def __init__(self) -> None:
        super().__init__()
        self.dec = nn.Linear(2, 2)
        self.norm = nn.BatchNorm1d(2)
        self.vfm = nn.Linear(2, 2).requires_grad_(False)


def _set_params(module: nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(value)


def test_halflife_rampup_matches_hand_computation():
    # Official rule (docs/design.md, "EMA"; StyleGAN): ema_nimg = min(H, cur_nimg * r),
    # beta = 0.5 ** (B / max(ema_nimg, 1e-8)), cur_nimg counted before the step.
    H, r, B = 40.0, 0.5, 8
    model = nn.Linear(3, 1)
    _set_params(model, 1.0)
    ema = EMA({"m": model}, EMAConfig(mode="halflife", halflife_nimg=H, rampup=r))
    values = [2.0, -1.0, 3.0, 0.5, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0]  # weights after each step
    expect, nimg = 1.0, 0
    betas = []
    for v in values:
        _set_params(model, v)
        got_beta = ema.update(batch_size=B)
        ema_nimg = min(H, nimg * r)
        beta = 0.5 ** (B / max(ema_nimg, 1e-8))
        betas.append(beta)
        expect = beta * expect + (1 - beta) * v
        nimg += B
        assert got_beta == pytest.approx(beta, rel=1e-12)
        for t in ema.state_dict()["params"].values():
            np.testing.assert_allclose(t.numpy(), expect, rtol=1e-6, atol=1e-6)
    assert betas[0] == 0.0  # first update copies the weights (cur_nimg = 0)
    assert betas[1] == pytest.approx(0.5 ** (8 / 4))  # ramp: 8 images * 0.5 = 4
    assert betas[-1] == pytest.approx(0.5 ** (8 / 40))  # ramped up to the half-life
    assert ema.nimg == B * len(values) and ema.num_updates == len(values)


def test_paper_beta_at_batch_512():
    # (docs/design.md, "EMA"): beta = 0.99778 at batch 512 once ramped up (160k half-life).
    beta = ema_beta(EMA_PRESETS["tokenizer"], 512, cur_nimg=10_000_000)
    assert beta == pytest.approx(0.5 ** (512 / 160_000)) and round(beta, 5) == 0.99778
    # Ramp-up: at 1M images ema_nimg = min(160k, 50k) = 50k.
    assert ema_beta(EMA_PRESETS["tokenizer"], 512, cur_nimg=1_000_000) == pytest.approx(0.5 ** (512 / 50_000))


def test_fixed_decay_and_external_counter():
    model = nn.Linear(1, 1, bias=False)
    _set_params(model, 0.0)
    ema = EMA(model, "dit")
    expect = 0.0
    for v in [1.0, 2.0, -3.0]:
        _set_params(model, v)
        assert ema.update() == 0.9999
        expect = 0.9999 * expect + 0.0001 * v
    np.testing.assert_allclose(ema.state_dict()["params"]["weight"].item(), expect, rtol=0, atol=1e-9)
    # Half-life mode uses a caller's global image counter when given (carries across stages).
    ema2 = EMA(model, EMAConfig(mode="halflife", halflife_nimg=100.0, rampup=0.1))
    assert ema2.update(batch_size=10, cur_nimg=500) == pytest.approx(0.5 ** (10 / 50))
    with pytest.raises(ValueError, match="batch_size"):
        ema2.update()


def test_frozen_modules_are_ignored():
    gen = Gen()
    ema = EMA({"dec": gen.dec}, EMAConfig(mode="decay", decay=0.5))
    assert ema.param_names == ["dec.weight", "dec.bias"]  # the frozen VFM and the norm are not passed
    assert not any(n.startswith("norm") for n in ema.buffer_names)
    assert EMA({"gen": gen}, EMAConfig(mode="decay")).param_names == [
        f"gen.{n}" for n, p in gen.named_parameters() if p.requires_grad
    ]  # a parent holding a frozen VFM: its frozen parameters are skipped
    vfm_before = [p.clone() for p in gen.vfm.parameters()]
    dec_init = {n: p.clone() for n, p in gen.dec.named_parameters()}
    _set_params(gen, 3.0)  # also changes the frozen VFM and the norm
    ema.update()
    with ema.swap():
        for n, p in gen.dec.named_parameters():
            torch.testing.assert_close(p, 0.5 * dec_init[n] + 0.5 * 3.0)
        # Untracked tensors are left as they are in the module (3.0), not reverted.
        assert all(torch.all(p == 3.0) for p in gen.vfm.parameters())
        assert all(torch.all(p == 3.0) for p in gen.norm.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(vfm_before, gen.vfm.parameters()))
    # A module with nothing trainable (a frozen VFM passed by mistake) is an error naming it.
    with pytest.raises(ValueError, match="vfm"):
        EMA({"dec": gen.dec, "vfm": gen.vfm})


def test_swap_values_buffers_and_restore():
    gen = Gen()
    _set_params(gen.dec, 0.0)
    ema = EMA({"gen": gen}, EMAConfig(mode="decay", decay=0.75))
    _set_params(gen.dec, 4.0)
    gen.norm.running_mean.fill_(7.0)  # buffers are copied, not averaged
    ema.update()
    raw = {n: p.clone() for n, p in gen.named_parameters()}
    with ema.swap():
        assert torch.all(gen.dec.weight == 1.0) and torch.all(gen.dec.bias == 1.0)  # 0.75*0 + 0.25*4
        assert torch.all(gen.norm.running_mean == 7.0)
        with pytest.raises(RuntimeError, match="swapped"):
            ema.update()
        sd = ema.state_dict()  # readable while swapped
    for n, p in gen.named_parameters():
        assert torch.equal(p, raw[n]), n
    assert torch.all(sd["params"]["gen.dec.weight"] == 1.0)
    # An exception inside the swap still restores the raw weights.
    with pytest.raises(KeyError), ema.swap():
        raise KeyError("boom")
    assert torch.equal(gen.dec.weight, raw["dec.weight"])


def test_state_dict_round_trip_and_errors():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    ema_a = EMA({"m": a}, "debug")
    _set_params(a, 2.0)
    ema_a.update(batch_size=4)
    _set_params(a, 5.0)
    ema_a.update(batch_size=4)
    ema_b = EMA({"m": b}, "debug")
    ema_b.load_state_dict(ema_a.state_dict())
    for k, v in ema_a.state_dict()["params"].items():
        assert torch.equal(v, ema_b.state_dict()["params"][k])
    assert (ema_b.nimg, ema_b.num_updates) == (8, 2)
    with pytest.raises(KeyError, match="missing"):
        EMA({"other": nn.Linear(2, 2)}, "debug").load_state_dict(ema_a.state_dict())
    with pytest.raises(ValueError, match="shape"):
        EMA({"m": nn.Linear(3, 2)}, "debug").load_state_dict(ema_a.state_dict())
    with pytest.raises(KeyError, match="preset"):
        EMA(a, "nope")
    with pytest.raises(ValueError, match="mode"):
        EMAConfig(mode="linear")


def test_shared_parameters_counted_once_and_device_follow():
    shared = nn.Linear(2, 2)
    ema = EMA({"a": shared, "b": shared}, "dit")
    assert ema.param_names == ["a.weight", "a.bias"]
    model = nn.Sequential(nn.Linear(2, 2))
    ema = EMA(model, "dit")
    model.to(torch.float64)  # the EMA follows the live tensors by name
    ema.update()
    assert ema.shadow_params[0].dtype == torch.float32  # keeps its own dtype (fp32 master copy)


def test_bf16_weights_get_fp32_shadow():
    model = nn.Linear(4, 4, bias=False).to(torch.bfloat16)
    ema = EMA(model, "dit")
    assert ema.shadow_params[0].dtype == torch.float32
    before = ema.shadow_params[0].clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update()
    # 1e-4 steps survive in fp32 (they would round away in bf16).
    torch.testing.assert_close(ema.shadow_params[0] - before, torch.full_like(before, 1e-4), rtol=0, atol=2e-6)
    with ema.swap():
        assert model.weight.dtype == torch.bfloat16
