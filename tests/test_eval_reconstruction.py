"""Reconstruction evaluation (official tools/reconstruct): metrics vs independent computations, the uint8
conversion vs torchvision's `to_pil_image`, the evaluation record, and the script end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image
from scipy.ndimage import correlate1d
from torchvision.transforms.functional import pil_to_tensor, to_pil_image

from vfmvae.metrics.reconstruction import ReconstructionMetrics, psnr_per_image, ssim_per_image


def _pair(seed: int = 0, n: int = 4, size: int = 32):
    g = torch.Generator().manual_seed(seed)
    real = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    noise = torch.randint(-20, 21, real.shape, generator=g)
    fake = (real.int() + noise).clamp(0, 255).to(torch.uint8)
    return real, fake


def _numpy_psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / mse)


def _numpy_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM as torchmetrics defines it (the official protocol's implementation), written with numpy/scipy:
    [-1, 1], data range 2, Gaussian 11 / sigma 1.5 on whole-sample reflect-padded images, variances
    clamped at 0, mean over the *full* map (torchmetrics 1.x does not crop the border)."""
    a, b = a.astype(np.float64) / 127.5 - 1, b.astype(np.float64) / 127.5 - 1
    x = np.arange(11) - 5
    k = np.exp(-0.5 * x**2 / 1.5**2)
    k /= k.sum()

    def filt(im):
        padded = np.pad(im, ((0, 0), (5, 5), (5, 5)), mode="reflect")
        return correlate1d(correlate1d(padded, k, axis=1), k, axis=2)[:, 5:-5, 5:-5]

    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    mu1, mu2 = filt(a), filt(b)
    s11 = np.maximum(filt(a * a) - mu1**2, 0)
    s22 = np.maximum(filt(b * b) - mu2**2, 0)
    s12 = filt(a * b) - mu1 * mu2
    ssim = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s11 + s22 + c2))
    return float(ssim.mean())


def test_psnr_and_ssim_match_independent_formulas():
    real, fake = _pair()
    psnr = psnr_per_image(real, fake)
    ssim = ssim_per_image(real, fake)
    for i in range(len(real)):
        assert psnr[i].item() == pytest.approx(_numpy_psnr(real[i].numpy(), fake[i].numpy()), abs=1e-9)
        assert ssim[i].item() == pytest.approx(_numpy_ssim(real[i].numpy(), fake[i].numpy()), abs=1e-5)


def _official_png_pixels(decoded: torch.Tensor) -> torch.Tensor:
    """tools/reconstruct/reconstruct.py: `to_pil_image(gen.add(1).div(2).clamp(0, 1))`, read back as uint8."""
    unit = decoded.add(1).div(2).clamp(0, 1)
    return torch.stack([pil_to_tensor(to_pil_image(img)) for img in unit])


def test_metrics_convert_decoded_images_like_the_official_pngs():
    g = torch.Generator().manual_seed(0)
    decoded = torch.rand(3, 3, 16, 16, generator=g) * 2.4 - 1.2  # a decoder overshoots [-1, 1]
    decoded[0, 0, 0, :4] = torch.tensor([-1.0, 0.0, 1.0, 1 / 255 - 1e-6])  # edges and a level boundary
    real = torch.randint(0, 256, decoded.shape, generator=g, dtype=torch.uint8)
    official = _official_png_pixels(decoded)

    metrics = ReconstructionMetrics()
    assert metrics.uint8_mode == "truncate"  # the default follows the official tool
    fake = metrics.update_decoded(real, decoded)
    assert torch.equal(fake, official)
    expected = ReconstructionMetrics()
    expected.update(real, official)
    assert metrics.compute() == expected.compute()

    rounded = ReconstructionMetrics(uint8_mode="round").to_uint8(decoded)
    assert not torch.equal(rounded, official)  # rounding is half a level brighter on average
    assert (rounded.int() - official.int()).unique().tolist() == [0, 1]
    with pytest.raises(ValueError, match="uint8_mode"):
        ReconstructionMetrics(uint8_mode="nearest")


class _TinyFeatures:
    """A tiny deterministic feature network: pool = per-channel means and stds; logits = a fixed projection."""

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images.float() / 255.0
        pool = torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)
        w = torch.linspace(-3, 3, 6 * 5).view(6, 5)
        return {"pool": pool, "logits": pool @ w}


def _fid_scipy(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_rfid_and_ris_against_independent_computations():
    real, fake = _pair(seed=1, n=24, size=16)
    fake[12:] = (fake[12:].int() // 2).to(torch.uint8)  # make the sets differ
    net = _TinyFeatures()
    metrics = ReconstructionMetrics(inception=net)
    metrics.update(real[:10], fake[:10])
    metrics.update(real[10:], fake[10:])
    out = metrics.compute()
    fr, ff = net(real)["pool"].double().numpy(), net(fake)["pool"].double().numpy()
    assert out["rfid"] == pytest.approx(_fid_scipy(ff, fr), rel=1e-6, abs=1e-9)
    # torch-fidelity's IS: shuffle with RandomState(2020), 10 splits, exp(mean KL(p(y|x) || p(y))).
    logits = net(fake)["logits"].double().numpy()
    logits = logits[np.random.RandomState(2020).permutation(len(logits))]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    scores = []
    for i in range(10):
        part = p[i * 24 // 10 : (i + 1) * 24 // 10]
        kl = (part * (np.log(part) - np.log(part.mean(0, keepdims=True)))).sum(1).mean()
        scores.append(np.exp(kl))
    assert out["ris"] == pytest.approx(float(np.mean(scores)), rel=1e-9)
    same = ReconstructionMetrics(inception=net)
    same.update(real, real)
    assert abs(same.compute()["rfid"]) < 1e-6


def test_bad_inputs_are_clear_errors():
    real, fake = _pair()
    with pytest.raises(TypeError, match="uint8"):
        psnr_per_image(real.float(), fake.float())
    with pytest.raises(ValueError, match="equal shape"):
        ssim_per_image(real, fake[:, :, :16])
    with pytest.raises(RuntimeError, match="before any update"):
        ReconstructionMetrics().compute()


@pytest.mark.slow
def test_script_end_to_end_with_random_inception(tmp_path):
    from datamodules.demo_data import DemoDataConfig, write_demo_imagefolder
    from lightning_modules.commands.eval_reconstruction import run
    from vfmvae.metrics.inception import random_inception_weights
    from vfmvae.tokenizer import VFMVAE, get_config

    data = tmp_path / "val"
    write_demo_imagefolder(data, DemoDataConfig(resolution=80, num_per_class=1))
    torch.manual_seed(0)
    VFMVAE(get_config("debug")).save_pretrained(tmp_path / "tok", weights="ema")
    weights = random_inception_weights(tmp_path / "inception.pth")
    out = tmp_path / "result.json"
    pairs = tmp_path / "pairs"
    record = run(
        [
            "--tokenizer",
            str(tmp_path / "tok"),
            "--data-root",
            str(data),
            "--resolution",
            "64",
            "--num-images",
            "12",
            "--batch-size",
            "6",
            "--inception-weights",
            str(weights),
            "--save-images",
            str(pairs),
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    saved = json.loads(out.read_text())
    assert saved["results"] == pytest.approx(record["results"])
    res = saved["results"]
    assert res["num_images"] == 12 and np.isfinite(res["rfid"]) and np.isfinite(res["ris"])
    # PSNR / SSIM recomputed independently from the written PNG pairs.
    inputs = sorted(pairs.glob("*_input.png"))
    assert len(inputs) == 12
    psnrs, ssims = [], []
    for path in inputs:
        a = np.asarray(Image.open(path)).transpose(2, 0, 1)
        b = np.asarray(Image.open(str(path).replace("_input", "_recon"))).transpose(2, 0, 1)
        psnrs.append(_numpy_psnr(a, b))
        ssims.append(_numpy_ssim(a, b))
    assert res["psnr"] == pytest.approx(float(np.mean(psnrs)), abs=1e-6)
    assert res["ssim"] == pytest.approx(float(np.mean(ssims)), abs=1e-5)
    assert (
        saved["inputs"]["tokenizer"]["weights_sha256"]
        == json.loads((tmp_path / "tok" / "config.json").read_text())["weights_sha256"]
    )
    assert saved["kind"] == "reconstruction" and saved["protocol"]["uint8"].startswith("truncate")
    assert "tools/reconstruct" in saved["protocol"]["follows"]
