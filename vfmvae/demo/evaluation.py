"""The demo's evaluation (phase ``evaluate`` of `vfmvae demo`): reconstruction PSNR/SSIM, a demo FID, and
whether samples differ between classes. Plain PyTorch / NumPy on uint8 NHWC image arrays."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from vfmvae.codec import uint8_to_signed, uint8_to_unit
from vfmvae.metrics import frechet_distance
from vfmvae.metrics.reconstruction import ReconstructionMetrics

FEATURE_SEED = 0  # the demo FID's random feature network
FEATURE_DIM = 32


@torch.no_grad()
def reconstruction_metrics(model: nn.Module, images: np.ndarray, seed: int = 0, batch_size: int = 16):
    """PSNR/SSIM of held-out uint8 NHWC ``images`` and the uint8 NHWC reconstructions.

    The paper protocol (docs/design.md, "Evaluation protocol"; `vfmvae.metrics.ReconstructionMetrics`): a
    *sampled* latent (seeded), the decoder output written as 8-bit pixels the way the official
    ``tools/reconstruct`` writes PNGs (``to_uint8(.., "truncate")``), PSNR (data range 255) and SSIM (Gaussian
    11 / 1.5) per image, averaged.
    """
    real = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    metrics = ReconstructionMetrics(uint8_mode="truncate")
    gen = torch.Generator().manual_seed(seed)
    recon = []
    for start in range(0, len(real), batch_size):
        batch = real[start : start + batch_size]
        posterior = model.encode(uint8_to_unit(batch))
        recon.append(metrics.update_decoded(batch, model.decode(posterior.sample(generator=gen))))
    return metrics.compute(), torch.cat(recon).permute(0, 2, 3, 1).numpy()


def demo_feature_net() -> nn.Module:
    """A tiny fixed random conv net for the demo FID (kaiming-normal, seed ``FEATURE_SEED``; no weights file).

    Inception-v3 would cost ~1 CPU-second per image here (299 px); this net is ~1000x cheaper and, being random
    but fixed, still maps images to colour/texture statistics, so the demo FID ranks sample sets consistently
    within the demo. It is not comparable with any published FID (`make evaluate` runs the ADM suite).
    """
    gen = torch.Generator().manual_seed(FEATURE_SEED)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 4, 2, 1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, 2, 1),
        nn.ReLU(),
        nn.Conv2d(32, FEATURE_DIM, 4, 2, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / m.weight[0].numel()) ** 0.5)
                m.bias.zero_()
    return net.eval().requires_grad_(False)


@torch.no_grad()
def demo_fid(images_a: np.ndarray, images_b: np.ndarray) -> float:
    """Fréchet distance (`vfmvae.metrics.frechet_distance`) of two uint8 NHWC sets in `demo_feature_net` space."""
    net = demo_feature_net()
    feats = [
        net(uint8_to_signed(torch.from_numpy(x).permute(0, 3, 1, 2))).double().numpy() for x in (images_a, images_b)
    ]
    stats = [(f.mean(0), np.cov(f, rowvar=False)) for f in feats]
    return float(frechet_distance(stats[0][0], stats[0][1], stats[1][0], stats[1][1]))


def class_difference_test(images: np.ndarray, labels: np.ndarray) -> dict:
    """One-way ANOVA of per-image mean colour across classes (per RGB channel, Bonferroni over channels).

    Classes "differ" when the smallest corrected p-value is < 0.01: the class label changes what is sampled.
    """
    from scipy.stats import f_oneway

    colour = images.reshape(len(images), -1, 3).astype(np.float64).mean(1)  # (N, 3)
    tests = [f_oneway(*[colour[labels == c, ch] for c in np.unique(labels)]) for ch in range(3)]
    p = min(1.0, 3 * min(float(t.pvalue) for t in tests))
    return {"f_statistic": [float(t.statistic) for t in tests], "p_value": p, "threshold": 0.01}


def evaluate_demo(
    trained: nn.Module,
    untrained: nn.Module,
    held_out: np.ndarray,
    samples: np.ndarray,
    labels: np.ndarray,
    reference: np.ndarray,
    train: np.ndarray,
    num_classes: int,
) -> tuple[dict, np.ndarray]:
    """The record of the demo's phase ``evaluate`` and the reconstruction tiles ``(classes, 3, R, R, 3)``.

    ``held_out``: uint8 NHWC held-out images in class order (resize_center crop) for the reconstructions of the
    ``trained`` and ``untrained`` tokenizer; ``samples`` / ``labels``: the generated images; ``reference`` and
    ``train``: held-out and training images (ADM crop) for the demo FID and its real-vs-real floor.
    """
    after, fake_after = reconstruction_metrics(trained, held_out)
    before, fake_before = reconstruction_metrics(untrained, held_out)
    rows = np.arange(0, len(held_out), max(1, len(held_out) // num_classes))[:num_classes]  # one image per class
    tiles = np.stack([held_out[rows], fake_before[rows], fake_after[rows]], axis=1)  # image | untrained | trained
    record = {
        "reconstruction": {
            "untrained": before,
            "trained": after,
            "psnr_gain_db": after["psnr"] - before["psnr"],
            "ssim_gain": after["ssim"] - before["ssim"],
        },
        "demo_fid": {
            "fid": demo_fid(samples, reference),
            "fid_train_vs_val": demo_fid(train[: len(reference)], reference),
            "num_samples": len(samples),
            "num_reference": len(reference),
        },
        "fid_feature_network": f"DemoFeatureNet: 3 strided convs, kaiming-random (seed {FEATURE_SEED}), "
        f"{FEATURE_DIM}-d mean-pooled; comparable only within the demo",
        "class_difference": class_difference_test(samples, labels),
    }
    return record, tiles


__all__ = [
    "FEATURE_DIM",
    "FEATURE_SEED",
    "class_difference_test",
    "demo_feature_net",
    "demo_fid",
    "reconstruction_metrics",
]
