"""LPIPS-VGG perceptual loss as the paper trains with it (docs/design.md, "Tokenizer stages and losses").

The official loss is taming-transformers' LPIPS: a frozen VGG16 (`relu1_2 ... relu5_3`), unit-
normalised channel features, squared differences weighted by the v0.1 linear heads, spatial mean,
sum over the 5 layers, then mean over the batch. Inputs in [-1, 1].

Weights:
- Linear heads: the v0.1 `vgg.pth` that ships inside the torchmetrics wheel
  (`torchmetrics/functional/image/lpips_models/vgg.pth`), the same heads as taming's `vgg.pth`.
- Backbone: torchvision's ImageNet VGG16 (`vgg16-397923af.pth`) from an explicit local path, or
  from `$TORCH_HOME/hub/checkpoints/` (torch.hub's cache). Nothing is ever downloaded. A random
  backbone must be asked for explicitly (`random_backbone=True`, tests only).

Dropout and train/eval: taming's heads are built with dropout, but the official loss module is
created with `.eval()` and is not a child of any trained module, so dropout never fires. We build
the heads without dropout and pin the module to eval mode (`train()` is a no-op), so a parent's
`.train()` cannot turn on dropout or change anything: LPIPS stays a deterministic function. All
parameters are frozen; gradients flow to the input images only.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from vfmvae.utils.safe_load import load_user_file

VGG16_FILENAME = "vgg16-397923af.pth"
CHANNELS = (64, 128, 256, 512, 512)
# Indices into torchvision's `vgg16().features` at which the 5 LPIPS slices end (exclusive).
SLICE_ENDS = (4, 9, 16, 23, 30)
# LPIPS input scaling (ImageNet statistics expressed for [-1, 1] inputs).
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


def torchmetrics_lpips_heads_path(net: str = "vgg") -> Path:
    """Path of the v0.1 linear heads shipped inside the installed torchmetrics wheel."""
    import torchmetrics.functional.image.lpips as tm_lpips

    path = Path(tm_lpips.__file__).resolve().parent / "lpips_models" / f"{net}.pth"
    if not path.is_file():
        raise FileNotFoundError(f"LPIPS heads not found at {path}; is torchmetrics >= 1.0 installed?")
    return path


def find_vgg16_weights(weights_path: str | os.PathLike | None = None) -> Path | None:
    """Explicit path if given (must exist), else `$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth` if present."""
    if weights_path is not None:
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(f"VGG16 weights for LPIPS not found at {path}")
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILENAME
    return cached if cached.is_file() else None


def _build_vgg16_features() -> nn.Sequential:
    # torchvision's VGG16 feature stack ("D" config) without building the 120 M-parameter classifier;
    # module indices match `vgg16().features`, so its state-dict keys load unchanged.
    from torchvision.models.vgg import cfgs, make_layers

    return make_layers(cfgs["D"], batch_norm=False)[: SLICE_ENDS[-1]]


class LPIPS(nn.Module):
    """Frozen LPIPS-VGG. `forward(pred, target) -> (B,)` distances; `loss(...)` -> batch mean.

    Args:
        vgg_weights_path: local torchvision VGG16 state dict (full model or `features.*` keys).
        heads_path: LPIPS v0.1 heads; default the torchmetrics wheel's `vgg.pth`.
        random_backbone: allow a randomly initialised VGG16 (tests); otherwise a missing
            backbone is an error.
    """

    def __init__(
        self,
        vgg_weights_path: str | os.PathLike | None = None,
        heads_path: str | os.PathLike | None = None,
        random_backbone: bool = False,
    ):
        super().__init__()
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.features = _build_vgg16_features()
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in CHANNELS)
        self._load_backbone(vgg_weights_path, random_backbone)
        self._load_heads(heads_path)
        self.requires_grad_(False)
        super().train(False)

    def _load_backbone(self, path: str | os.PathLike | None, random_backbone: bool) -> None:
        found = find_vgg16_weights(path)
        if found is None:
            if random_backbone:
                return
            raise FileNotFoundError(
                f"LPIPS needs the ImageNet VGG16 weights ({VGG16_FILENAME}): pass vgg_weights_path or place the file in "
                f"{Path(torch.hub.get_dir()) / 'checkpoints'} ($TORCH_HOME); random_backbone=True is for tests only"
            )
        state = load_user_file(found, what="VGG16 weights")
        state = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")} or state
        # Only the convs up to relu5_3 are used; the classifier and the last max-pool are dropped.
        wanted = self.features.state_dict().keys()
        missing = [k for k in wanted if k not in state]
        if missing:
            raise ValueError(f"VGG16 weights at {found} lack {missing}")
        self.features.load_state_dict({k: state[k] for k in wanted})

    def _load_heads(self, path: str | os.PathLike | None) -> None:
        path = Path(path) if path is not None else torchmetrics_lpips_heads_path("vgg")
        state = load_user_file(path, what="LPIPS heads file")
        for i, head in enumerate(self.heads):
            # taming / torchmetrics name them `lin{i}.model.1.weight` (index 0 was the dropout).
            key = next((k for k in (f"lin{i}.model.1.weight", f"lin{i}.model.0.weight") if k in state), None)
            if key is None:
                raise ValueError(f"LPIPS heads file {path} has no weight for layer {i} (keys: {sorted(state)})")
            head.weight.data.copy_(state[key])

    def train(self, mode: bool = True) -> LPIPS:
        # Pinned to eval: see the module docstring.
        return self

    def _vgg_taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps, start = [], 0
        for end in SLICE_ENDS:
            for layer in self.features[start:end]:
                x = layer(x)
            taps.append(x)
            start = end
        return taps

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample LPIPS distance `(B,)` between `(B, 3, H, W)` images in [-1, 1]."""
        if pred.shape != target.shape or pred.dim() != 4 or pred.shape[1] != 3:
            raise ValueError(
                f"LPIPS expects two (B, 3, H, W) images of equal shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
            )
        # Float32 island, autocast off: the official loss ran fp32 (TF32 off) and the unit-normalisation
        # divides by small feature norms.
        with torch.autocast(pred.device.type, enabled=False):
            return self._distance(pred.float(), target.float())

    def _distance(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        batch = torch.cat([pred, target])
        taps = self._vgg_taps((batch - self.shift) / self.scale)
        total = pred.new_zeros(pred.shape[0], dtype=torch.float32)
        for tap, head in zip(taps, self.heads):
            unit = tap / (tap.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)
            f_pred, f_target = unit.chunk(2)
            total = total + head((f_pred - f_target).square()).mean(dim=(1, 2, 3))
        return total

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Batch-mean LPIPS, the official training term (weight 10 in stages 0-1, 2 in stage 2)."""
        return self.forward(pred, target).mean()


__all__ = ["LPIPS", "find_vgg16_weights", "torchmetrics_lpips_heads_path"]
