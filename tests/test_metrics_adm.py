"""ADM suite pieces vs independent formulas: Fréchet distance, IS, precision/recall, sFID features, batch invariance."""

import warnings

import numpy as np
import pytest
import torch
from scipy import linalg, special, stats
from torch import nn

from vfmvae.metrics import (
    IllConditionedWarning,
    compute_statistics,
    frechet_distance,
    inception_score,
    precision_recall,
)
from vfmvae.metrics.adm_suite import ImageBatch, evaluate_adm, load_batch, load_images

# ----------------------------------------------------------------------------------------------- Fréchet distance


def _fd_lowrank(mu1, x1, mu2, x2):
    """FD with sigma_i = X_i X_i^T: Tr (S1 S2)^1/2 = nuclear norm of X2^T X1 (independent of eigen-routes)."""
    s1, s2 = x1 @ x1.T, x2 @ x2.T
    nuclear = np.linalg.svd(x2.T @ x1, compute_uv=False).sum()
    d = mu1 - mu2
    return d @ d + np.trace(s1) + np.trace(s2) - 2 * nuclear


def test_frechet_matches_scipy_sqrtm_well_conditioned():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(500, 12)), rng.normal(size=(400, 12)) @ rng.normal(size=(12, 12)) + 0.3
    s1, s2 = compute_statistics(a), compute_statistics(b)
    np.testing.assert_allclose(s1.sigma, np.cov(a, rowvar=False), rtol=1e-12)
    covmean = linalg.sqrtm(s1.sigma @ s2.sigma).real
    d = s1.mu - s2.mu
    ref = d @ d + np.trace(s1.sigma) + np.trace(s2.sigma) - 2 * np.trace(covmean)
    assert frechet_distance(s1.mu, s1.sigma, s2.mu, s2.sigma) == pytest.approx(ref, rel=1e-9)
    assert s1.frechet_distance(s1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_near_singular_is_finite_correct_and_warns():
    rng = np.random.default_rng(1)
    d = 64
    x1, x2 = rng.normal(size=(d, 5)), rng.normal(size=(d, 7))  # rank 5 and 7 in 64 dims
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    ref = _fd_lowrank(mu1, x1, mu2, x2)
    with pytest.warns(IllConditionedWarning):
        got = frechet_distance(mu1, x1 @ x1.T, mu2, x2 @ x2.T)
    assert np.isfinite(got)
    assert got == pytest.approx(ref, rel=1e-7)


def test_frechet_diagonal_closed_form():
    a, b = np.array([1.0, 4.0, 9.0, 1e-9]), np.array([4.0, 1.0, 16.0, 1e-9])
    mu1, mu2 = np.zeros(4), np.ones(4)
    expected = 4.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IllConditionedWarning)
        assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-9)


def test_frechet_bad_input():
    with pytest.raises(ValueError, match="different lengths"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="at least 2"):
        compute_statistics(np.zeros((1, 3)))


# ------------------------------------------------------------------------------------------------ Inception score


def test_inception_score_direct_formula_with_adm_chunks():
    rng = np.random.default_rng(2)
    logits = rng.normal(scale=3.0, size=(12000, 7))  # chunks of 5000, 5000, 2000
    p = special.softmax(logits, axis=1)
    scores = []
    for start in range(0, 12000, 5000):
        part = p[start : start + 5000]
        marginal = part.mean(0)
        kl = stats.entropy(part.T, np.repeat(marginal[:, None], len(part), axis=1))  # KL per row (axis 0)
        scores.append(np.exp(kl.mean()))
    assert inception_score(logits) == pytest.approx(np.mean(scores), rel=1e-10)
    # not the 10-equal-splits convention of torch-fidelity
    ten = np.mean(
        [np.exp(stats.entropy(c.T, np.repeat(c.mean(0)[:, None], len(c), 1)).mean()) for c in np.split(p, 10)]
    )
    assert inception_score(logits) != pytest.approx(ten, rel=1e-6)


def test_inception_score_known_values():
    confident = np.eye(10)[np.arange(100) % 10] * 60.0
    assert inception_score(confident) == pytest.approx(10.0, rel=1e-6)
    assert inception_score(np.zeros((50, 1008))) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="2-D"):
        inception_score(np.zeros(5))


# ------------------------------------------------------------------------------------------ precision and recall


def test_precision_recall_constructed_sets():
    ref = np.stack([np.arange(20.0), np.zeros(20)], 1)
    near = np.stack([np.arange(10.0), np.full(10, 0.5)], 1)
    far = np.stack([100.0 + np.arange(10.0), np.zeros(10)], 1)
    smp = np.concatenate([near, far])
    # precision: the 10 near samples lie within 0.5 of a reference whose 3-NN radius is >= 2; the far ones nowhere.
    # recall: sample radii are 3 at the ends (0, 9) and 2 inside, so references x = 0..11 are covered, 12..19 not.
    for block in (10000, 3):
        pr = precision_recall(ref, smp, k=3, block_size=block)
        assert pr["precision"] == pytest.approx(0.5)
        assert pr["recall"] == pytest.approx(12 / 20)
    same = precision_recall(ref, ref)
    assert same == {"precision": 1.0, "recall": 1.0}


def test_precision_recall_bad_input():
    with pytest.raises(ValueError, match="dimensions differ"):
        precision_recall(np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(ValueError, match="more than k"):
        precision_recall(np.random.rand(3, 2), np.random.rand(10, 2))


# ------------------------------------------------------------------------------------- suite with a tiny network


class TinyFeatures(nn.Module):
    """Stand-in for the ADM Inception: uint8 (B,3,H,W) -> pool (B,16), logits (B,10), spatial (B,12)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.head = nn.Linear(16, 10)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    @torch.no_grad()
    def forward(self, x):
        assert x.dtype == torch.uint8
        h = torch.relu(self.conv(x.float() / 127.5 - 1))
        pool = h.mean((2, 3))
        spatial = nn.functional.adaptive_avg_pool2d(h[:, :3], 2).permute(0, 2, 3, 1).reshape(len(x), -1)
        return {"pool": pool, "logits": self.head(pool), "spatial": spatial}


def _images(seed, n, size=12, shift=0):
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(128 + shift, 50, size=(n, size, size, 3)), 0, 255).astype(np.uint8)


def test_suite_plumbing_cache_and_batch_size_invariance(tmp_path, monkeypatch):
    samples, ref = _images(0, 40), _images(1, 45, shift=30)
    np.savez(tmp_path / "samples.npz", arr_0=samples)
    np.savez(tmp_path / "ref.npz", arr_0=ref)
    net = TinyFeatures()
    s_batch, r_batch = load_batch(tmp_path / "samples.npz"), load_batch(tmp_path / "ref.npz")
    results = [evaluate_adm(s_batch, r_batch, net, batch_size=bs) for bs in (1, 7, 32)]
    for other in results[1:]:  # CPU conv kernels differ per batch size only at float round-off
        assert other == pytest.approx(results[0], rel=1e-6)
    res = results[0]
    # independent recomputation of FID from features of the whole set at once
    f_s = net(torch.from_numpy(samples).permute(0, 3, 1, 2))
    f_r = net(torch.from_numpy(ref).permute(0, 3, 1, 2))
    a, b = f_s["pool"].double().numpy(), f_r["pool"].double().numpy()
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    d = a.mean(0) - b.mean(0)
    fid = d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(linalg.sqrtm(s1 @ s2).real)
    assert res["fid"] == pytest.approx(fid, rel=1e-6)
    assert res["inception_score"] == pytest.approx(inception_score(f_s["logits"].numpy()), rel=1e-6)
    assert 0.0 <= res["precision"] <= 1.0 and res["num_samples"] == 40 and res["num_reference"] == 45

    # cache: the second call must not recompute any features
    cached = evaluate_adm(s_batch, r_batch, net, cache_dir=tmp_path / "cache")
    import vfmvae.metrics.adm_suite as suite

    monkeypatch.setattr(suite, "extract_features", lambda *a, **k: pytest.fail("cache miss"))
    assert evaluate_adm(s_batch, r_batch, net, cache_dir=tmp_path / "cache") == cached
    assert cached == pytest.approx(res, rel=1e-6)

    # reference statistics in the npz take precedence over its images (ADM read_statistics)
    np.savez(
        tmp_path / "ref_stats.npz", arr_0=ref, mu=np.zeros(16), sigma=np.eye(16), mu_s=np.zeros(12), sigma_s=np.eye(12)
    )
    with_stats = evaluate_adm(s_batch, load_batch(tmp_path / "ref_stats.npz"), net, cache_dir=tmp_path / "cache")
    st = compute_statistics(a)
    assert with_stats["fid"] == pytest.approx(frechet_distance(st.mu, st.sigma, np.zeros(16), np.eye(16)))
    assert with_stats["precision"] == res["precision"]


def test_suite_bad_input(tmp_path):
    net = TinyFeatures()
    ref = ImageBatch("ref", _images(1, 10))
    with pytest.raises(ValueError, match="fewer than the 50 requested"):
        evaluate_adm(ImageBatch("s", _images(0, 10)), ref, net, num_samples=50)
    np.savez(tmp_path / "f.npz", arr_0=np.zeros((4, 8, 8, 3), np.float32))
    with pytest.raises(TypeError, match="uint8"):
        load_images(tmp_path / "f.npz")
    np.savez(tmp_path / "g.npz", arr_0=np.zeros((4, 3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="NHWC"):
        load_images(tmp_path / "g.npz")
    with pytest.raises(FileNotFoundError):
        load_images(tmp_path / "missing.npz")


def test_full_fp32_restores_settings():
    from vfmvae.metrics.numerics import fp32_precision_state, full_fp32

    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    # A training script's usual settings, through the legacy API (they map onto the per-backend settings).
    torch.set_float32_matmul_precision("medium")
    torch.backends.cudnn.allow_tf32 = True
    try:
        caller = fp32_precision_state()
        assert caller["cuda.matmul"] == "tf32" and caller["mkldnn.matmul"] == "bf16"
        with full_fp32():
            assert set(fp32_precision_state().values()) == {"ieee"}
        assert fp32_precision_state() == caller
        assert torch.get_float32_matmul_precision() == "medium" and torch.backends.cudnn.allow_tf32
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]
