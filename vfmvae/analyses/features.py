"""Image features for the Frechet distances of Table 1 runs, chosen by name so tests can inject a cheap one.

``feature_extractor(name)`` returns ``fn(uint8 (N, H, W, 3) numpy) -> float64 (N, D) numpy``:

- ``"inception@WEIGHTS"``: the ADM evaluator's pool_3 features (`vfmvae.metrics.inception.AdmInceptionFeatures`,
  torch-fidelity weights file): the paper's rFID / gFID;
- ``"demo"``: the demo's tiny fixed random conv net (`vfmvae.demo.evaluation.demo_feature_net`; ~1000x cheaper
  than Inception on a CPU, meaningful only inside a demo run).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from vfmvae.metrics import frechet_distance

__all__ = ["feature_extractor", "frechet_distance_of"]

Features = Callable[[np.ndarray], np.ndarray]


def feature_extractor(name: str, batch_size: int = 64) -> Features:
    kind, _, weights = name.partition("@")
    if kind == "demo":
        from vfmvae.codec import uint8_to_signed
        from vfmvae.demo.evaluation import demo_feature_net

        net = demo_feature_net()

        @torch.no_grad()
        def demo(images: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
            return torch.cat([net(uint8_to_signed(b)) for b in x.split(batch_size)]).double().numpy()

        return demo
    if kind == "inception":
        if not weights:
            raise ValueError("feature extractor 'inception' needs its weights file: inception@PATH")
        from vfmvae.metrics.inception import AdmInceptionFeatures

        net = AdmInceptionFeatures(weights).eval()

        @torch.no_grad()
        def inception(images: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
            return torch.cat([net(b)["pool"] for b in x.split(batch_size)]).double().numpy()  # uint8 in, as ADM

        return inception
    raise ValueError(f"unknown feature extractor {name!r}; choose 'demo' or 'inception@WEIGHTS'")


def frechet_distance_of(features: Features, images_a: np.ndarray, images_b: np.ndarray) -> float:
    """Frechet distance (`vfmvae.metrics.frechet_distance`, float64) of two uint8 NHWC image sets in a feature space."""
    fa, fb = features(images_a), features(images_b)
    return float(frechet_distance(fa.mean(0), np.cov(fa, rowvar=False), fb.mean(0), np.cov(fb, rowvar=False)))
