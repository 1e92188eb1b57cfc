"""CKNNA vs the official fixtures (tianciB/VFM-VAE metrics.py) and an independent dense NumPy formula."""

import numpy as np
import pytest
import torch
from conftest import official_fixture

from vfmvae.metrics import cknna
from vfmvae.metrics.cknna import prepare_features


@pytest.fixture(scope="module")
def cases(fixtures_dir):
    tensors, meta, _ = official_fixture("cknna_cases")
    return tensors, meta["cases"]


def _dense_cknna_numpy(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """The CKNNA of (docs/design.md, "SE-CKNNA") written densely in float64 (independent of the sparse
    implementation)."""
    n = a.shape[0]
    K, L = a @ a.T, b @ b.T

    def mask(G):
        G = G.copy()
        np.fill_diagonal(G, -np.inf)
        idx = np.argsort(-G, axis=1, kind="stable")[:, :k]
        M = np.zeros_like(G)
        np.put_along_axis(M, idx, 1.0, axis=1)
        return M

    def hsic(P, Q):
        P, Q = P.copy(), Q.copy()
        np.fill_diagonal(P, 0)
        np.fill_diagonal(Q, 0)
        v = (P * Q.T).sum() + P.sum() * Q.sum() / ((n - 1) * (n - 2)) - 2 * (P @ Q).sum() / (n - 2)
        return v / (n * (n - 3))

    MK, ML = mask(K), mask(L)
    M = MK * ML
    return hsic(M * K, M * L) / (np.sqrt(hsic(MK * K, MK * K) * hsic(ML * L, ML * L)) + 1e-6)


def test_preprocessing_matches_fixture(cases):
    tensors, meta = cases
    for side in ("A", "B"):
        got = prepare_features(tensors[f"case0.{side}"])
        torch.testing.assert_close(got, tensors[f"case0.{side}_processed"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_cknna_reproduces_official_values(cases, index):
    tensors, meta = cases
    case = meta[index]
    a, b = tensors[f"{case['name']}.A"], tensors[f"{case['name']}.B"]
    assert cknna(a, b, topk=10) == pytest.approx(case["cknna_topk10"], abs=1e-5)
    # the unclipped value is recorded too; it checks the clipping switch
    assert cknna(a, b, topk=10, clip_quantile=None) == pytest.approx(case["cknna_topk10_without_clipping"], abs=1e-5)
    # small row blocks must not change anything
    assert cknna(a, b, topk=10, block_size=33) == pytest.approx(case["cknna_topk10"], abs=1e-5)


def test_cknna_matches_dense_formula_on_processed_inputs(cases):
    tensors, meta = cases
    a, b = tensors["case0.A_processed"], tensors["case0.B_processed"]
    ref = _dense_cknna_numpy(a.double().numpy(), b.double().numpy(), 10)
    assert cknna(a, b, topk=10, preprocess=False) == pytest.approx(ref, abs=1e-6)
    assert ref == pytest.approx(meta[0]["cknna_topk10"], abs=1e-5)


def test_cknna_invariances():
    g = torch.Generator().manual_seed(0)
    latent = torch.randn(120, 6, generator=g)
    a = latent @ torch.randn(6, 20, generator=g) + 0.5 * torch.randn(120, 20, generator=g)
    b = latent @ torch.randn(6, 14, generator=g) + 0.5 * torch.randn(120, 14, generator=g)
    base = cknna(a, b, topk=10)
    perm = torch.randperm(120, generator=g)
    assert cknna(a[perm], b[perm], topk=10) == pytest.approx(base, abs=1e-6)
    assert cknna(3.7 * a, 0.01 * b, topk=10) == pytest.approx(base, abs=1e-6)
    assert cknna(a, a, topk=10) == pytest.approx(1.0, abs=1e-4)
    # independent rows: alignment near 0, clearly below the correlated pair
    noise = torch.randn(120, 14, generator=g)
    assert abs(cknna(a, noise, topk=10)) < 0.3 < base


def test_cknna_bad_input():
    x = torch.randn(20, 4)
    with pytest.raises(ValueError, match="same number of rows"):
        cknna(x, torch.randn(19, 4))
    with pytest.raises(ValueError, match="topk"):
        cknna(x, x, topk=1)
    with pytest.raises(ValueError, match="topk"):
        cknna(x, x, topk=None)
    with pytest.raises(ValueError, match="2-D"):
        cknna(x[None], x[None])
    with pytest.raises(ValueError, match="NaN"):
        cknna(x, torch.full((20, 4), float("nan")))
    with pytest.raises(TypeError, match="floating"):
        cknna(x.long(), x)


def test_cknna_degenerate_features_warn():
    zeros = torch.zeros(12, 3)  # e.g. a zero-initialised final layer: all kernels vanish
    with pytest.warns(RuntimeWarning, match="non-positive self-HSIC"):
        value = cknna(zeros, torch.randn(12, 3), topk=3)
    assert value == 0.0  # 0 / (0 + 1e-6), as the official code
