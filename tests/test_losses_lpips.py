"""LPIPS-VGG loss: same numbers as torchmetrics' reference LPIPS, frozen, eval-pinned, offline-safe."""

from __future__ import annotations

import pytest
import torch

from vfmvae.losses import LPIPS


@pytest.fixture(scope="module")
def reference_and_weights(tmp_path_factory):
    """torchmetrics' LPIPS (v0.1 heads from the wheel, random VGG16) and its backbone saved as a torchvision file."""
    from torchmetrics.functional.image.lpips import _LPIPS

    torch.manual_seed(0)
    reference = _LPIPS(pretrained=True, net="vgg", pnet_rand=True).eval()
    # torchmetrics keeps torchvision's module indices inside its slices: `slice{k}.{i}.*` == `features.{i}.*`.
    features = {f"features.{k.split('.', 1)[1]}": v for k, v in reference.net.state_dict().items()}
    path = tmp_path_factory.mktemp("vgg") / "vgg16-random.pth"
    torch.save(features, path)
    return reference, path


def test_lpips_matches_torchmetrics_reference(reference_and_weights):
    reference, path = reference_and_weights
    ours = LPIPS(vgg_weights_path=path)
    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    b = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    expected = reference(a, b).flatten()
    torch.testing.assert_close(ours(a, b), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours.loss(a, b), expected.mean(), atol=1e-6, rtol=1e-5)
    assert ours(a, a).abs().max().item() < 1e-6


def test_lpips_is_frozen_eval_pinned_and_passes_input_gradients(reference_and_weights):
    _, path = reference_and_weights
    lpips = LPIPS(vgg_weights_path=path)
    parent = torch.nn.Sequential(lpips)
    parent.train()
    assert not lpips.training and all(not m.training for m in lpips.modules())
    assert all(not p.requires_grad for p in lpips.parameters())
    assert not any(isinstance(m, torch.nn.Dropout) for m in lpips.modules())
    pred = torch.zeros(1, 3, 32, 32, requires_grad=True)
    lpips.loss(pred, torch.rand(1, 3, 32, 32) * 2 - 1).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_lpips_heads_are_the_torchmetrics_v01_heads(reference_and_weights):
    reference, _ = reference_and_weights
    ours = LPIPS(random_backbone=True)
    for i, head in enumerate(ours.heads):
        torch.testing.assert_close(head.weight, reference.lins[i].model[-1].weight)


def test_lpips_refuses_to_run_without_backbone_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty hub cache: nothing to find, nothing downloaded
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth"):
        LPIPS()
    with pytest.raises(FileNotFoundError, match="not found"):
        LPIPS(vgg_weights_path=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="equal shape"):
        LPIPS(random_backbone=True)(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 16, 16))
