"""Precision/recall as the ADM evaluator computes them: float16 distance blocks, the float32 fallback, no TF32.

The reference below is an independent NumPy re-implementation of `ManifoldEstimator` / `DistanceBlock` from
`openai/guided-diffusion/evaluations/evaluator.py`, with the same loop structure (row x column batches, a
(rows, N) float32 buffer, `np.partition`, the two-sided `less_thans`) and the float16 rule per block.

The synthetic features are multiples of 1/64 below 8, so every float32 sum of squares and every dot product is
exact whatever the summation order: the only roundings left are the float16 ones under test (squares, norms,
dot products, the combination `(|u|^2 - 2 u.v) + |v|^2`), and the comparison must be exact.
"""

from __future__ import annotations

import importlib
import inspect
import logging

import numpy as np
import pytest
import torch

from vfmvae.metrics import precision_recall
from vfmvae.metrics.adm_suite import evaluate_adm
from vfmvae.metrics.numerics import fp32_precision_state

pr_module = importlib.import_module("vfmvae.metrics.precision_recall")


# ---------------------------------------------------------------------------------- independent ADM reference
def _np_distances_fp16(u32: np.ndarray, v32: np.ndarray) -> np.ndarray:
    u, v = u32.astype(np.float16), v32.astype(np.float16)
    norm_u = (u * u).astype(np.float32).sum(1).astype(np.float16).reshape(-1, 1)
    norm_v = (v * v).astype(np.float32).sum(1).astype(np.float16).reshape(1, -1)
    uv = (u.astype(np.float32) @ v.astype(np.float32).T).astype(np.float16)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.maximum(norm_u - 2 * uv + norm_v, np.float16(0))


def _np_distances_fp32(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    norm_u = (u * u).sum(1).reshape(-1, 1)
    norm_v = (v * v).sum(1).reshape(1, -1)
    return np.maximum(norm_u - 2 * (u @ v.T) + norm_v, np.float32(0))


def _np_block(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """DistanceBlock.distance_block: the float16 block, or float32 when it is not all finite (tf.cond)."""
    d16 = _np_distances_fp16(u, v)
    return d16.astype(np.float32) if np.isfinite(d16).all() else _np_distances_fp32(u, v)


def _np_radii(feats: np.ndarray, batch: int, k: int = 3) -> np.ndarray:
    n = len(feats)
    radii = np.zeros([n], dtype=np.float32)
    buffer = np.zeros([batch, n], dtype=np.float32)
    for b1 in range(0, n, batch):
        e1 = min(b1 + batch, n)
        for b2 in range(0, n, batch):
            e2 = min(b2 + batch, n)
            buffer[0 : e1 - b1, b2:e2] = _np_block(feats[b1:e1], feats[b2:e2])
        radii[b1:e1] = np.partition(buffer[0 : e1 - b1], list(range(k + 1)), axis=1)[:, k]
    return radii


def _np_precision_recall(ref: np.ndarray, smp: np.ndarray, batch: int) -> tuple[float, float]:
    ref, smp = ref.astype(np.float32), smp.astype(np.float32)
    r_ref, r_smp = _np_radii(ref, batch), _np_radii(smp, batch)
    ref_status = np.zeros(len(ref), dtype=bool)
    smp_status = np.zeros(len(smp), dtype=bool)
    for b1 in range(0, len(ref), batch):
        for b2 in range(0, len(smp), batch):
            d = _np_block(ref[b1 : b1 + batch], smp[b2 : b2 + batch])[..., None]  # less_thans
            ref_status[b1 : b1 + batch] |= (d <= r_smp[b2 : b2 + batch].reshape(1, -1, 1)).any(1)[:, 0]
            smp_status[b2 : b2 + batch] |= (d <= r_ref[b1 : b1 + batch].reshape(-1, 1, 1)).any(0)[:, 0]
    return float(smp_status.mean()), float(ref_status.mean())


def _grid_features(seed: int, n: int, d: int = 64, spread: float = 1.0) -> np.ndarray:
    """Non-negative features near a 3-d subspace, on the 1/64 grid below 8; norms ~1600 (float16 step 1)."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(123).normal(size=(3, d))
    x = np.clip(rng.normal(size=(n, 3)) * spread @ basis * 0.3 + 5.0, 0, 511 / 64)
    return (np.round(x * 64) / 64).astype(np.float32)


@pytest.fixture(scope="module")
def grid_sets():
    return _grid_features(0, 300), _grid_features(1, 260, spread=1.3)


# ------------------------------------------------------------------------------------------------- the tests
def test_float16_distance_block_matches_the_reference_formula(grid_sets):
    ref, smp = grid_sets
    ours = pr_module.adm_float16_distances(torch.from_numpy(ref), torch.from_numpy(smp))
    assert ours.dtype == torch.float16
    np.testing.assert_array_equal(ours.numpy(), _np_distances_fp16(ref, smp))
    # float16 really changes the distances at this scale (the test would not notice a float32 implementation)
    assert (ours.float().numpy() != _np_distances_fp32(ref, smp)).mean() > 0.5


@pytest.mark.parametrize("block", [pr_module.ADM_BLOCK_SIZE, 64])
def test_float16_precision_recall_equals_the_adm_reference(grid_sets, block):
    ref, smp = grid_sets
    expected = _np_precision_recall(ref, smp, block)
    got = precision_recall(ref, smp, block_size=block)
    assert (got["precision"], got["recall"]) == expected
    fp32 = precision_recall(ref, smp, block_size=block, dtype="float32")
    assert (fp32["precision"], fp32["recall"]) != expected  # the float16 rounding decides some comparisons


def test_float16_overflow_falls_back_to_float32_per_block(grid_sets, caplog):
    ref, smp = grid_sets
    # Five copies of a point whose square (256^2 = 65536) overflows float16; every sum stays exact in float32.
    outlier = np.zeros((5, ref.shape[1]), dtype=np.float32)
    outlier[:, 0] = 256.0
    smp = np.concatenate([smp[:100], outlier, smp[100:]])
    block = 64  # 5 reference blocks; 5 sample blocks, the second (64-127) holds the outliers
    d16 = pr_module.adm_float16_distances(torch.from_numpy(ref[:64]), torch.from_numpy(smp[64:128]))
    assert not torch.isfinite(d16).all()
    d, fell_back = pr_module.distance_block(torch.from_numpy(ref[:64]), torch.from_numpy(smp[64:128]))
    assert fell_back and d.dtype == torch.float32
    np.testing.assert_array_equal(d.numpy(), _np_distances_fp32(ref[:64], smp[64:128]))
    assert not pr_module.distance_block(torch.from_numpy(ref[:64]), torch.from_numpy(smp[:64]))[1]

    expected = _np_precision_recall(ref, smp, block)
    with caplog.at_level(logging.WARNING, logger=pr_module.__name__):
        got = precision_recall(ref, smp, block_size=block)
    assert (got["precision"], got["recall"]) == expected
    # radii of the samples: 5 row blocks x the outlier column block + the outlier row block's other 4 = 9;
    # coverage: 5 reference row blocks x the outlier sample block = 5; out of 3 x 5 x 5 = 75 blocks.
    assert "14 of 75 float16 distance blocks overflowed" in caplog.text
    everything_fp32 = precision_recall(ref, smp, block_size=block, dtype="float32")
    assert (everything_fp32["precision"], everything_fp32["recall"]) != expected  # only the overflowing blocks


def test_tf32_enabled_by_the_caller_is_off_inside_and_restored(grid_sets, monkeypatch):
    ref, smp = grid_sets
    baseline = precision_recall(ref, smp, dtype="float32")
    seen, shapes = [], []
    original = pr_module.distance_block

    def spy(u, v, dtype="float16"):
        seen.append(tuple(sorted(fp32_precision_state().items())))
        shapes.append((len(u), len(v)))
        return original(u, v, dtype)

    monkeypatch.setattr(pr_module, "distance_block", spy)
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("medium")  # TF32 matmuls on CUDA, bfloat16 ones on oneDNN CPUs
    torch.backends.cudnn.allow_tf32 = True
    try:
        caller = fp32_precision_state()
        result = precision_recall(ref, smp, dtype="float32")
        after = fp32_precision_state()
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]
    assert caller["cuda.matmul"] == "tf32" and caller["mkldnn.matmul"] == "bf16"
    assert len(set(seen)) == 1 and set(dict(seen[0]).values()) == {"ieee"}
    assert after == caller
    assert result == baseline
    # ADM's orientation: each set's own rows for its radii, then (reference rows, sample columns) for both metrics.
    assert shapes == [(len(ref), len(ref)), (len(smp), len(smp)), (len(ref), len(smp))]


@pytest.mark.gpu
def test_tf32_guard_on_cuda():
    rng = np.random.default_rng(0)
    ref = rng.gamma(2.0, 0.2, size=(3000, 2048)).astype(np.float32)
    smp = rng.gamma(2.0, 0.21, size=(3000, 2048)).astype(np.float32)
    plain = precision_recall(ref, smp, dtype="float32", device="cuda")
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # TF32 matmuls
    try:
        assert precision_recall(ref, smp, dtype="float32", device="cuda") == plain
    finally:
        torch.set_float32_matmul_precision(before)


def test_float16_is_the_default_everywhere(grid_sets, repo_root):
    assert inspect.signature(precision_recall).parameters["dtype"].default == "float16"
    assert inspect.signature(evaluate_adm).parameters["pr_distance_dtype"].default == "float16"
    from vfmvae.commands import evaluate as script

    args = script.build_parser().parse_args(["s.npz", "r.npz"])
    assert args.pr_distance_dtype == "float16"
    ref, smp = grid_sets
    assert precision_recall(ref, smp) == precision_recall(ref, smp, dtype=torch.float16)


def test_bad_distance_dtype_is_a_clear_error(grid_sets):
    ref, smp = grid_sets
    with pytest.raises(ValueError, match="distance dtype must be one of"):
        precision_recall(ref, smp, dtype="bfloat16")
