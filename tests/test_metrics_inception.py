"""ADM Inception features (kaiming-initialised test weights, never a download) and the evaluate script."""

import json
import subprocess

import numpy as np
import pytest
import torch

from vfmvae.metrics.inception import AdmInceptionFeatures, extract_features, random_inception_weights


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return random_inception_weights(tmp_path_factory.mktemp("inception") / "inception_test.pth", seed=0)


@pytest.fixture(scope="module")
def net(weights):
    return AdmInceptionFeatures(weights)


def _images(n, seed=0, size=24):
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def test_feature_shapes_and_sfid_order(net):
    """sFID = Mixed_6d's first 7 channels (branch1x1 after ReLU), flattened in NHWC order -> 17*17*7 = 2023."""
    captured = {}
    h1 = net.net.Mixed_6d.register_forward_hook(lambda m, i, o: captured.update(out=o.clone(), inp=i[0].clone()))
    x = torch.from_numpy(_images(2)).permute(0, 3, 1, 2).contiguous()
    feats = net(x)
    h1.remove()
    assert feats["pool"].shape == (2, 2048) and feats["logits"].shape == (2, 1008)
    assert feats["spatial"].shape == (2, 2023) and feats["spatial"].dtype == torch.float32
    out = captured["out"]
    assert out.shape == (2, 768, 17, 17)
    b, h, w, c = 1, 5, 11, 6  # explicit NHWC index: ((h * 17) + w) * 7 + c
    assert feats["spatial"][b, (h * 17 + w) * 7 + c] == out[b, c, h, w]
    # channels 0..6 are branch1x1 (TF `mixed_6/conv`), the first concatenated branch
    torch.testing.assert_close(net.net.Mixed_6d.branch1x1(captured["inp"])[:, :7], out[:, :7])
    # IS logits: pool_3 @ W without bias
    torch.testing.assert_close(feats["logits"], feats["pool"] @ net.net.fc.weight.T, atol=1e-5, rtol=1e-5)
    assert feats["pool"].std(0).mean() > 0  # kaiming init gives sample-dependent features


def test_bad_input(net, tmp_path):
    with pytest.raises(TypeError, match="uint8"):
        net(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        net(torch.zeros(1, 16, 16, 3, dtype=torch.uint8))
    with pytest.raises(FileNotFoundError, match="Inception weights not found"):
        AdmInceptionFeatures(tmp_path / "nope.pth")
    with pytest.raises(TypeError, match="uint8"):
        extract_features(np.zeros((2, 8, 8, 3), np.float32), net)


@pytest.mark.slow
def test_inception_features_do_not_depend_on_batch_size(net):
    images = _images(8, seed=1)
    ref = extract_features(images, net, batch_size=1)
    for bs in (7, 32):
        got = extract_features(images, net, batch_size=bs)
        for key in ("pool", "logits", "spatial"):
            np.testing.assert_allclose(got[key], ref[key], rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_evaluate_script_end_to_end(weights, tmp_path, repo_root):
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "samples.npz", arr_0=rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8))
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    from PIL import Image

    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(ref_dir / f"{i:03d}.png")
    out = tmp_path / "res.json"
    # Through the README's command, `make evaluate` (the script's flags pass through EVAL_ARGS).
    extra = f"--cache-dir {tmp_path / 'cache'} --device cpu --batch-size 4"
    cmd = [
        "make",
        "-s",
        "-C",
        str(repo_root),
        "evaluate",
        f"SAMPLES={tmp_path / 'samples.npz'}",
        f"REF={ref_dir}",
        f"INCEPTION={weights}",
        f"OUT={out}",
        f"EVAL_ARGS={extra}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert "FID" in proc.stdout and "sFID" in proc.stdout and "Recall" in proc.stdout
    record = json.loads(out.read_text())
    res = record["results"]
    assert np.isfinite(res["fid"]) and np.isfinite(res["sfid"]) and res["num_samples"] == 5
    assert 0 <= res["precision"] <= 1 and 0 <= res["recall"] <= 1
    # asking for more samples than exist is a clear error
    proc = subprocess.run(cmd + ["NUM=10"], capture_output=True, text=True, timeout=900)
    assert proc.returncode != 0 and "fewer than the 10 requested" in proc.stderr
