"""ADM Inception features in PyTorch: torch-fidelity's `inception-v3-compat` (the converted TF 2015-12-05 graph).

ADM's evaluator (`openai/guided-diffusion/evaluations/evaluator.py`) feeds uint8-valued NHWC floats into the frozen
graph at `ExpandDims:0`, so the graph's own TF1 bilinear resize to 299 and (x - 128) / 128 run; torch-fidelity's
`inception-v3-compat` reproduces that exactly (converted weights, `interpolate_bilinear_2d_like_tensorflow1x`,
uint8 input). Taken from one forward pass:

- `pool`    (B, 2048): `pool_3:0`, for FID and precision/recall;
- `logits`  (B, 1008): pool_3 @ W of `softmax/logits/MatMul` without bias (torch-fidelity `logits_unbiased`), for IS;
- `spatial` (B, 2023): `mixed_6/conv:0[..., :7]` flattened in NHWC order, for sFID. TF `mixed_6` is PyTorch
  `Mixed_6d` (`mixed_4..7` <-> `Mixed_6b..6e`); its `conv` is `branch1x1`, the first branch InceptionC concatenates,
  so the feature is `Mixed_6d(x)[:, :7]` (after ReLU) permuted to (B, 17, 17, 7) then flattened.

Weights come from a local file only (`weights-inception-2015-12-05-6726825d.pth`); nothing is downloaded.
All features are fp32 and computed per sample (eval-mode BatchNorm), so they do not depend on the batch size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from torch import nn

from vfmvae.provenance import file_sha256
from vfmvae.utils.progress import progress

from .numerics import full_fp32

__all__ = [
    "AdmInceptionFeatures",
    "INCEPTION_WEIGHTS_FILENAME",
    "default_inception_weights_path",
    "random_inception_weights",
    "extract_features",
    "file_sha256",
]

INCEPTION_WEIGHTS_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
FEATURE_KEYS = ("pool", "logits", "spatial")


def default_inception_weights_path() -> Path:
    """Where torch.hub would cache torch-fidelity's weights: `$TORCH_HOME/hub/checkpoints/<file>`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILENAME


def _tf_inception_class():
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    return FeatureExtractorInceptionV3


class AdmInceptionFeatures(nn.Module):
    """Frozen ADM Inception: uint8 `(B, 3, H, W)` -> `{"pool": (B,2048), "logits": (B,1008), "spatial": (B,2023)}`."""

    spatial_channels = 7

    def __init__(self, weights_path: str | os.PathLike | None = None) -> None:
        super().__init__()
        path = Path(weights_path) if weights_path is not None else default_inception_weights_path()
        if not path.is_file():
            raise FileNotFoundError(
                f"Inception weights not found at {path}. Download torch-fidelity's {INCEPTION_WEIGHTS_FILENAME} "
                "(github.com/toshas/torch-fidelity/releases/tag/v0.2.0) on a machine with internet access and pass "
                "its path (or place it under $TORCH_HOME/hub/checkpoints/); this project never downloads weights."
            )
        self.weights_path = path
        # torch-fidelity reads the file with weights_only=False: our loader reads it first and refuses any object
        # that could run code (what passes it unpickles to the same plain tensors and containers).
        from vfmvae.utils.safe_load import load_user_file

        load_user_file(path, what="Inception weights", mmap=True)
        self.net = _tf_inception_class()("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
        self.net.requires_grad_(False).eval()
        self._spatial: torch.Tensor | None = None
        self.net.Mixed_6d.register_forward_hook(self._grab_spatial)

    def _grab_spatial(self, module, inputs, output) -> None:
        # clone: later blocks apply in-place ReLUs to tensors derived from this one.
        self._spatial = output[:, : self.spatial_channels].detach().clone()

    def train(self, mode: bool = True) -> AdmInceptionFeatures:  # always eval: BN must use running stats
        return super().train(False)

    @property
    def fingerprint(self) -> str:
        """Identifies the weights (for the statistics cache)."""
        if not hasattr(self, "_fingerprint"):
            self._fingerprint = "adm-inception-v3-compat:" + file_sha256(self.weights_path)
        return self._fingerprint

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if not torch.is_tensor(images) or images.dtype != torch.uint8:
            raise TypeError(
                f"ADM Inception expects a uint8 tensor in [0, 255], got "
                f"{images.dtype if torch.is_tensor(images) else type(images).__name__}"
            )
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"ADM Inception expects (B, 3, H, W) images, got shape {tuple(images.shape)}")
        with full_fp32():
            (pool,) = self.net(images)
        # Unbiased logits computed here in float64 (then rounded to fp32) rather than by torch-fidelity's fp32 `mm`,
        # whose BLAS blocking makes the last bit depend on the batch size.
        logits = pool.double() @ self.net.fc.weight.double().T
        spatial = self._spatial
        self._spatial = None
        # NHWC flattening, as ADM's `spatial_pred.reshape([N, -1])` on a TF (N, 17, 17, 7) tensor.
        spatial = spatial.permute(0, 2, 3, 1).reshape(spatial.shape[0], -1)
        return {"pool": pool.float(), "logits": logits.float(), "spatial": spatial.float()}


@torch.no_grad()
def random_inception_weights(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write kaiming-initialised `inception-v3-compat` weights to `path` (TESTS ONLY; never a download).

    PyTorch's default init gives degenerate (near-constant) features; kaiming-normal convs and mild random BN
    statistics give usable, sample-dependent features.
    """
    cls = _tf_inception_class()
    gen = torch.Generator().manual_seed(seed)
    empty = Path(path).with_suffix(".empty.pth")
    torch.save({}, empty)
    try:
        with mock.patch.object(cls, "load_state_dict", lambda self, *a, **k: None):
            net = cls("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    finally:
        empty.unlink(missing_ok=True)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.copy_(1.0 + 0.1 * torch.randn(m.weight.shape, generator=gen))
            m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
            m.running_mean.zero_()
            m.running_var.fill_(1.0)
        elif isinstance(m, nn.Linear):
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / m.weight.shape[1] ** 0.5)
            m.bias.zero_()
    torch.save(net.state_dict(), path)
    return Path(path)


def _iter_batches(images: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size]


@torch.no_grad()
def extract_features(
    images: np.ndarray,
    extractor: nn.Module,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    keys: tuple[str, ...] = FEATURE_KEYS,
) -> dict[str, np.ndarray]:
    """Run `extractor` over uint8 NHWC `images (N, H, W, 3)` in batches -> `{key: float32 (N, D_key)}`.

    `extractor` maps uint8 `(B, 3, H, W)` to a dict of `(B, D)` tensors (e.g. `AdmInceptionFeatures`).
    """
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise TypeError(
            f"images must be a uint8 numpy array (N, H, W, 3), got {getattr(images, 'dtype', type(images).__name__)}"
        )
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must have shape (N, H, W, 3), got {images.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    out: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    batches = progress(_iter_batches(images, batch_size), total=-(-len(images) // batch_size), desc="Inception")
    for batch in batches:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(device).permute(0, 3, 1, 2).contiguous()
        feats = extractor(x)
        for k in keys:
            out[k].append(feats[k].float().cpu().numpy())
    return {k: np.concatenate(v, axis=0) for k, v in out.items()}
