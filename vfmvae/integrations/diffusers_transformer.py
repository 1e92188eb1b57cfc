"""`LightningDiTTransformer2DModel`: a `vfmvae.dit.LightningDiT` as a diffusers model.

diffusers pipelines read `.device` / `.dtype` off their components and save them with `save_pretrained`; a plain
`nn.Module` has neither, so the pipeline holds the network through this thin `ModelMixin` adapter. The network is
unchanged: `forward(x (B, C, s, s), t (B,), y (B,)) -> velocity (B, C, s, s)` in LightningDiT's own time
convention, t = 1 is data (docs/design.md, "Time conventions"); the pipeline converts from diffusers' sigma.

Folder layout (diffusers' own): `config.json` (`lightningdit_config`: the `LightningDiTConfig` fields) and
`diffusion_pytorch_model.safetensors` (the network's weights under `network.`). Loading is local only.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import ConfigMixin, ModelMixin

from vfmvae.dit import LightningDiT, LightningDiTConfig

__all__ = ["LightningDiTTransformer2DModel"]


class LightningDiTTransformer2DModel(ModelMixin, ConfigMixin):
    """Wrap a built `LightningDiT` (`network=`) or build one from `lightningdit_config` (a `LightningDiTConfig`
    field dict; random weights, the `from_config` path)."""

    ignore_for_config = ["network"]
    _supports_gradient_checkpointing = False

    def __init__(self, lightningdit_config: Mapping[str, Any] | None = None, *, network: LightningDiT | None = None):
        super().__init__()
        if network is None:
            if lightningdit_config is None:
                raise ValueError(
                    "LightningDiTTransformer2DModel needs network= (a LightningDiT) or lightningdit_config="
                )
            network = LightningDiT(LightningDiTConfig(**dict(lightningdit_config)))
        elif not isinstance(network, LightningDiT):
            raise TypeError(
                f"LightningDiTTransformer2DModel wraps a vfmvae.dit.LightningDiT, got {type(network).__name__}"
            )
        elif lightningdit_config is not None and LightningDiTConfig(**dict(lightningdit_config)) != network.config:
            raise ValueError("LightningDiTTransformer2DModel: lightningdit_config differs from network.config")
        self.network = network
        self.train(network.training)  # the adapter takes the wrapped network's mode
        self.register_to_config(lightningdit_config=dataclasses.asdict(network.config))

    @property
    def network_config(self) -> LightningDiTConfig:
        """Shapes of the wrapped network: `input_size` (latent side), `in_channels`, `num_classes`, ..."""
        return self.network.config

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Velocity `d x_t / d t` with t = 1 at data; see `LightningDiT.forward`."""
        return self.network(x, t, y)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs
    ) -> LightningDiTTransformer2DModel:
        """diffusers' loader on a local folder, offline, with the model built on the CPU first: LightningDiT's
        position tables are non-persistent buffers computed at construction, which a meta-device build would lose."""
        root = Path(pretrained_model_name_or_path).expanduser() / (kwargs.get("subfolder") or "")
        if not root.is_dir():
            raise FileNotFoundError(
                f"{root} is not a local folder: LightningDiTTransformer2DModel loads local folders only"
            )
        kwargs.update(low_cpu_mem_usage=False, local_files_only=True, device_map=None)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
