"""Benchmarks (docs/benchmarks.md, "Speed, memory and MFU"): FLOP counts against a hand count and
FlopCounterMode; a smoke run.

The hand count below is written out term by term from the architecture (docs/design.md, "Diffusion networks
and the network interface"), not from `benchmarks.flops`, so a wrong formula there fails here;
`FlopCounterMode` is the independent machine count.
"""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.flops import (
    count_flops,
    dit_forward_flops,
    dit_train_flops_per_image,
    register_cpu_sdpa_flops,
)
from vfmvae.dit import LIGHTNINGDIT_PRESETS, SIT_REG_PRESETS, build_lightningdit, build_sit_reg


def mm(m, n, k):
    return 2 * m * n * k


def test_lightningdit_debug_hand_count():
    # debug: 8x8x8 latent, patch 1 -> N = 64 tokens, D = 64, depth 2, SwiGLU hidden int(2/3 * 256) = 170.
    N, D, C, H, L = 64, 64, 8, 170, 2
    embed = mm(N, D, C) + mm(1, D, 256) + mm(1, D, D)  # patch conv + timestep MLP
    attention = mm(N, 3 * D, D) + mm(N, D, D) + 2 * mm(N, N, D)  # qkv, proj, Q K^T and A V (all heads)
    swiglu = mm(N, 2 * H, D) + mm(N, D, H)  # w12, w3
    block = attention + swiglu + mm(1, 6 * D, D)  # + adaLN (per sample)
    final = mm(1, 2 * D, D) + mm(N, C, D)
    hand = embed + L * block + final
    assert dit_forward_flops(LIGHTNINGDIT_PRESETS["debug"]).total == hand
    assert dit_train_flops_per_image(LIGHTNINGDIT_PRESETS["debug"]) == 3 * hand


def test_sit_reg_debug_hand_count():
    # debug: N = 64 patches + 1 class token, D = 64, depth 3, GELU MLP 256, projector 64 -> 64 -> 32.
    N, T, D, C, L, P, Z = 64, 65, 64, 8, 3, 64, 32
    embed = mm(N, D, C) + mm(1, D, 256) + mm(1, D, D) + mm(1, D, Z)  # + class-token projection
    block = mm(T, 3 * D, D) + mm(T, D, D) + 2 * mm(T, T, D) + mm(T, 4 * D, D) + mm(T, D, 4 * D) + mm(1, 6 * D, D)
    projector = mm(T, P, D) + mm(T, P, P) + mm(T, Z, P)
    final = mm(1, 2 * D, D) + mm(N, C, D) + mm(1, Z, D)
    assert dit_forward_flops(SIT_REG_PRESETS["debug"]).total == embed + L * block + projector + final


def test_xl_anchor():
    # 500 images/s of LightningDiT-XL/1 on a 989 TFLOP/s GPU is ~36% MFU (the target in docs/benchmarks.md, "Speed,
    # memory and MFU").
    per_image = dit_train_flops_per_image(LIGHTNINGDIT_PRESETS["LightningDiT-XL/1"])
    assert 500 * per_image / 989.4e12 == pytest.approx(0.36, abs=0.005)


def _inputs(model, B, device):
    c = model.config
    x = torch.randn(B, c.in_channels, c.input_size, c.input_size, device=device)
    args = [x, torch.rand(B, device=device), torch.randint(0, 10, (B,), device=device)]
    if hasattr(c, "z_dims"):
        args.append(torch.randn(B, c.z_dims[0], device=device))
    return args


@pytest.mark.parametrize("build", [build_lightningdit, build_sit_reg])
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_forward_matches_flop_counter(build, device):
    """Analytic forward == FlopCounterMode exactly. On CPU this also checks the SDPA formula we
    register (PyTorch counts the CPU flash kernel as 0); on meta SDPA decomposes into bmm."""
    with torch.device(device):
        model = build("debug")
    if device == "meta":
        model.reset_buffers()
    B = 3
    args = _inputs(model, B, device)
    assert count_flops(lambda: model(*args)) == B * dit_forward_flops(model.config).total


@pytest.mark.parametrize("build", [build_lightningdit, build_sit_reg])
def test_train_step_close_to_three_forwards(build):
    """Forward + backward counted on meta is 3x forward up to the input gradients that are never
    needed (patch-embedding and timestep-MLP inputs): within 1%."""
    with torch.device("meta"):
        model = build("debug")
    model.reset_buffers()
    args = _inputs(model, 2, "meta")

    def step():
        out = model(*args)
        loss = out.square().mean() if torch.is_tensor(out) else out[0].square().mean() + out[1][0].mean()
        loss.backward()

    counted = count_flops(step)
    assert counted == pytest.approx(2 * dit_train_flops_per_image(model.config), rel=0.01)


def test_cpu_sdpa_formula_registered():
    register_cpu_sdpa_flops()
    q = torch.randn(2, 4, 16, 8, requires_grad=True)
    fwd = 2 * (2 * 2 * 4 * 16 * 16 * 8)  # two (16x8)@(8x16)-sized products per head and sample
    assert count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q)) == fwd


def test_bad_case_is_a_clear_error():
    from benchmarks.cases import BenchCase, get_suite

    with pytest.raises(ValueError, match="dtype"):
        BenchCase("x", "dit_train", dtype="fp16")
    with pytest.raises(KeyError, match="unknown benchmark suite"):
        get_suite("nope")


def test_smoke_run_writes_table_and_json(tmp_path, capsys):
    from benchmarks.run import main

    rows = main(["--suite", "smoke", "--out-dir", str(tmp_path), "--threads", "1"])
    assert [r["status"] for r in rows] == ["ok", "ok"]
    out = capsys.readouterr().out
    assert "| LightningDiT debug | fp32 | 2 |" in out and "| REG SiT debug |" in out
    report = json.loads((tmp_path / "smoke-latest.json").read_text())
    row = report["rows"][0]
    assert row["images_per_s"] > 0 and row["flops_per_image"] == dit_train_flops_per_image(
        LIGHTNINGDIT_PRESETS["debug"]
    )
    assert report["device"]["estimated"] is True  # CPU peak is flagged as an estimate
