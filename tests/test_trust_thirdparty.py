"""A file a third-party library would unpickle in full is checked by our loader first (no code runs from it)."""

from __future__ import annotations

import os

import pytest
import torch

from vfmvae.utils.safe_load import UnsafePickleError


class Trap:
    """Unpickling this calls ``os.system("touch MARKER")``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_inception_weights_are_read_without_running_code(tmp_path):
    """torch-fidelity reads its Inception weights with ``torch.load(weights_only=False)``."""
    from vfmvae.metrics.inception import AdmInceptionFeatures

    marker = tmp_path / "MARKER"
    trap = tmp_path / "pt_inception.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(1), "x": Trap(marker)}, trap)
    with pytest.raises(UnsafePickleError) as info:
        AdmInceptionFeatures(trap)
    assert not marker.exists(), "the booby-trapped Inception file ran code"
    assert str(trap) in str(info.value) and "--trust-pickle" in str(info.value) and "\n" not in str(info.value)
