"""Linear probe of tokenizer latents (paper Table 1, "linear probe"): numerics against independent formulas, and the
`vfmvae linear-probe` command end to end on the demo photographs (15 classes) with a tiny random VFM-VAE."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from vfmvae.probe import LARS, LinearProbe, ParameterFreeBatchNorm, probe_protocol, warmup_cosine_lr


def test_parameter_free_batchnorm_is_batchnorm1d_without_affine():
    torch.manual_seed(0)
    ours, ref = ParameterFreeBatchNorm(5), nn.BatchNorm1d(5, affine=False, eps=1e-6)
    assert not list(ours.parameters())
    for _ in range(3):
        x = torch.randn(7, 5) * 3 + 1
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    ours.eval(), ref.eval()
    x = torch.randn(4, 5)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


def test_lars_step_matches_the_formula():
    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))  # |w| = 5
    b = nn.Parameter(torch.tensor([1.0]))
    opt = LARS([w, b], lr=0.5, weight_decay=0.1, momentum=0.9, trust_coefficient=0.01)
    w.grad, b.grad = torch.tensor([[0.0, 1.0]]), torch.tensor([2.0])
    opt.step()
    update = torch.tensor([[0.3, 1.4]])  # grad + 0.1 w
    trust = 0.01 * 5.0 / math.hypot(0.3, 1.4)
    torch.testing.assert_close(w.detach(), torch.tensor([[3.0, 4.0]]) - 0.5 * trust * update)
    torch.testing.assert_close(b.detach(), torch.tensor([1.0 - 0.5 * 2.0]))  # 1-d: plain momentum SGD, no decay
    w.grad, b.grad = torch.zeros_like(w), torch.tensor([0.0])
    opt.step()  # momentum carries the first update: mu = 0.9 * 2
    torch.testing.assert_close(b.detach(), torch.tensor([0.0 - 0.5 * 0.9 * 2.0]))


def test_warmup_cosine_schedule():
    assert warmup_cosine_lr(0.0, 1.0, 90, 10) == 0.0
    assert warmup_cosine_lr(5.0, 1.0, 90, 10) == pytest.approx(0.5)
    assert warmup_cosine_lr(10.0, 1.0, 90, 10) == pytest.approx(1.0)
    assert warmup_cosine_lr(50.0, 1.0, 90, 10) == pytest.approx(0.5)
    assert warmup_cosine_lr(90.0, 1.0, 90, 10, min_lr=0.1) == pytest.approx(0.1)


def test_protocols_and_probe_shapes():
    mae = probe_protocol("mae")
    assert (mae.optimizer, mae.epochs, mae.warmup_epochs, mae.global_batch_size) == ("lars", 90, 10, 16384)
    assert mae.peak_lr() == pytest.approx(6.4)  # 0.1 x 16384 / 256
    with pytest.raises(ValueError, match="unknown probe optimizer 'adam'"):
        probe_protocol("mae", optimizer="adam")
    with pytest.raises(KeyError, match="unknown linear-probe protocol"):
        probe_protocol("nope")
    probe = LinearProbe(8 * 4 * 4, 15)
    assert probe(torch.randn(6, 8, 4, 4)).shape == (6, 15)
    assert sum(p.numel() for p in probe.parameters()) == 128 * 15 + 15  # the normalisation has no parameters


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory):
    """Demo photographs (15 classes: 4 train + 2 held-out crops each, 64 px) probed through the command with a
    tiny random VFM-VAE (caches both splits first)."""
    from datamodules.demo_data import DemoDataConfig, write_demo_imagefolder
    from lightning_modules.commands.linear_probe import run

    root = tmp_path_factory.mktemp("probe")
    write_demo_imagefolder(root / "data" / "train", DemoDataConfig(resolution=64, num_per_class=4, seed=0))
    write_demo_imagefolder(root / "data" / "val", DemoDataConfig(resolution=64, num_per_class=2, seed=1))
    argv = ["--tokenizer", "none", "--tokenizer-preset", "debug", "--data-root", str(root / "data"),
            "--image-size", "64", "--protocol", "demo", "--global-batch-size", "20", "--epochs", "20",
            "--accelerator", "cpu", "--devices", "1", "--num-workers", "0", "--out", str(root / "out")]  # fmt: skip
    assert run(argv)["num_images"] == 30
    return root


def test_linear_probe_beats_chance_on_demo_data(probe_run):
    record = json.loads((probe_run / "out" / "linear_probe.json").read_text())
    assert record["kind"] == "linear_probe" and record["protocol"]["optimizer"] == "sgd"
    assert record["results"]["num_images"] == 30 and record["results"]["epochs"] == 20
    assert record["inputs"]["latent_shape"] == [8, 4, 4] and record["inputs"]["num_classes"] == 15
    assert record["inputs"]["tokenizer"]["kind"] == "vfmvae"
    # 15 classes: chance is 6.7 %; a linear map of the latent separates the photographs far better.
    assert record["results"]["top1"] >= 40.0, record["results"]


def test_linear_probe_command_errors(probe_run, capsys):
    from lightning_modules.commands.linear_probe import build_parser, main
    from vfmvae.commands._errors import InputError

    assert "--train-latents" in build_parser().format_help()
    with pytest.raises(SystemExit) as info:
        main(["--train-latents", str(probe_run / "out" / "latents" / "train")])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "vfmvae linear-probe: error: give --train-latents and --val-latents (or --tokenizer and --data-root)"
    )
    from lightning_modules.commands.linear_probe import run

    with pytest.raises(InputError, match="needs --data-root"):
        run(["--tokenizer", "none", "--tokenizer-preset", "debug"])
