"""Frozen text models: build from a local folder or a tiny random preset, keep frozen, keep out of
checkpoints (docs/design.md, "Frozen networks"; docs/text_to_image.md, "Text encoders").

A text encoder module keeps its Hugging Face model under the attribute ``frozen``. It is frozen by
construction (``requires_grad_(False)``, ``eval()`` whatever the parent does), never averaged by the EMA
(which tracks trainable parameters only) and not written into checkpoints: :func:`exclude_frozen_from_state_dict`
drops its tensors on save and forgives their absence on load, because the model is rebuilt from its
path (or, for a random preset, from a fixed seed) whenever the network is built.
"""

from __future__ import annotations

import os

import torch
from torch import nn

__all__ = ["FROZEN_ATTR", "FrozenTextModule", "exclude_frozen_from_state_dict", "seeded_random", "check_local_folder"]

FROZEN_ATTR = "frozen"


def check_local_folder(path: str | os.PathLike, what: str) -> str:
    """``path`` as a string if it is an existing folder, else a one-line error naming the config key."""
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"{what} folder {path} does not exist: give a local save_pretrained folder (text_encoder_path)"
        )
    return str(path)


def seeded_random(build, seed: int = 0):
    """``build()`` under a private RNG seeded with ``seed``: the same random weights at every build, and the
    caller's RNG untouched (a rebuilt random encoder must equal the one a checkpoint was trained with)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


class FrozenTextModule(nn.Module):
    """Base of the text encoders: ``self.frozen`` is the HF model; ``train()`` keeps it in eval mode.

    ``source``: where the frozen model came from (``kind``, ``path``, ``preset``, ``dtype``; set by
    `vfmvae.text.encoders.build_text_encoder`), recorded with its weights hash (`vfmvae.text.weights_record`).
    """

    source: dict | None = None
    _weights_sha256: str | None = None

    def weights_sha256(self) -> str:
        """sha256 of the frozen model's weights (`vfmvae.provenance.state_dict_sha256`), computed once: the
        model never trains, and the first call comes before any sharding or cast."""
        if self._weights_sha256 is None:
            from vfmvae.provenance import state_dict_sha256

            self._weights_sha256 = state_dict_sha256(self.frozen)
        return self._weights_sha256

    def _freeze(self) -> None:
        self.frozen.requires_grad_(False)
        self.frozen.eval()
        exclude_frozen_from_state_dict(self)

    def train(self, mode: bool = True):
        super().train(mode)
        self.frozen.eval()  # dropout stays off in a frozen model
        return self


def exclude_frozen_from_state_dict(module: nn.Module) -> None:
    """Drop ``module.frozen``'s tensors from ``state_dict`` and accept their absence in ``load_state_dict``."""

    def drop(mod, state_dict, prefix, local_metadata):
        for key in [k for k in state_dict if k.startswith(prefix + FROZEN_ATTR + ".")]:
            del state_dict[key]
        return state_dict

    def forgive(mod, incompatible):
        marker = FROZEN_ATTR + "."
        incompatible.missing_keys[:] = [
            k for k in incompatible.missing_keys if not (k.startswith(marker) or ("." + marker) in k)
        ]

    module._register_state_dict_hook(drop)
    module.register_load_state_dict_post_hook(forgive)
