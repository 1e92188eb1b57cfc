"""A third network, defined only here, goes through everything that drives a diffusion network.

`ToyTextDiT` is a tiny conditioned velocity MLP with its *own* condition type (a "text" embedding
``(B, L, D)`` with a zero null embedding, read from ``batch["text"]``) and a noise-at-one time convention. It is
registered here and then, without an edit anywhere else: trains a few steps through `DiffusionModule`, samples
through `vfmvae.transport.sample_latents` (CFG with its own null condition), is drawn by `SampleGridCallback`
and is probed block by block. That is what a text-conditioned DiT needs from the rest of the code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from test_diffusion_helpers import LATENT, Recorder, fit
from torch import nn
from torch.utils.data import DataLoader, Dataset

from callbacks.sample_grid import SampleGridCallback
from lightning_modules.diffusion import DiffusionModule
from vfmvae.codec import LatentNormalizer
from vfmvae.dit import DiffusionNetwork, NetworkFamily, NetworkOutput, SamplerPresets, register_network
from vfmvae.dit.interface import vfm_class_token_state
from vfmvae.metrics.se_probe import dit_block_features
from vfmvae.transport import TimeConvention, sample_latents, sampler_config


@dataclass(frozen=True)
class TextCondition:
    """Condition = a text embedding ``(B, length, dim)``; null = zeros; ``draw`` picks from a fixed prompt table."""

    length: int = 3
    dim: int = 6

    def from_batch(self, batch):
        return batch["text"]

    def null(self, n, device):
        return torch.zeros(n, self.length, self.dim, device=device)

    def null_like(self, condition):
        return torch.zeros_like(condition)

    def draw(self, mode, n, *, offset=0, generator=None):
        table = torch.randn(7, self.length, self.dim, generator=torch.Generator().manual_seed(123))
        rows = torch.arange(n) + offset if mode == "balanced" else torch.randint(0, 7, (n,), generator=generator)
        return table[rows % 7]


@dataclass(frozen=True)
class ToyConfig:
    latent: tuple[int, int, int] = LATENT  # the debug tokenizer's latents, so the sample grid can decode them
    hidden: int = 32
    depth: int = 2


class ToyBlock(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, h, c):
        return h + self.mlp(h + c)


class ToyTextDiT(nn.Module):
    """Per-position MLP over latent channels, conditioned on time and the mean text embedding."""

    time_convention = TimeConvention.NOISE_AT_ONE
    sampler_presets = SamplerPresets(default="reg-cfg", no_cfg="reg")  # noise-at-one SDE presets
    class_token_dim = None
    alignment_dim = None
    fsdp_forward_methods = ()

    def __init__(self, config: ToyConfig = ToyConfig(), activation_checkpointing: bool = False):
        super().__init__()
        self.config = config
        self.condition = TextCondition()
        c, hid = config.latent[0], config.hidden
        self.inp, self.out = nn.Linear(c, hid), nn.Linear(hid, c)
        self.cond = nn.Linear(self.condition.dim + 1, hid)
        self.blocks = nn.ModuleList(ToyBlock(hid) for _ in range(config.depth))
        self.calls: list[torch.Tensor] = []  # conditions seen by `velocity` (CFG check)

    latent_shape = property(lambda self: self.config.latent)
    token_grid = property(lambda self: self.config.latent[1])
    num_blocks = property(lambda self: len(self.blocks))

    def _run(self, x, t, text):
        h = self.inp(x.flatten(2).transpose(1, 2))  # (B, h*w, hidden)
        c = self.cond(torch.cat([text.mean(1), t[:, None].to(text.dtype)], dim=1))[:, None]
        hidden = []
        for block in self.blocks:
            h = block(h, c)
            hidden.append(h)
        v = self.out(h).transpose(1, 2).reshape(x.shape)
        return v, hidden

    def initial_state(self, n, generator, device):
        return torch.randn((n, *self.latent_shape), generator=generator, device=device)

    def velocity(self, state, t, condition):
        self.calls.append(condition.detach().clone())
        return self._run(state, t, condition)[0]

    def training_state(self, latents, alignment):
        return vfm_class_token_state(latents, alignment, None, None)

    def training_forward(self, state, t, condition):
        return NetworkOutput(self._run(state, t, condition)[0])

    def block_features(self, state, t, condition):
        v, hidden = self._run(state, t, condition)
        return {f"block_{i}": h for i, h in enumerate(hidden)} | {"final_layer": v.flatten(2).transpose(1, 2)}


def _build(preset, overrides, *, activation_checkpointing=False, **options):
    if options:
        raise ValueError(f"the toy network takes no options, got {sorted(options)}")
    return ToyTextDiT(ToyConfig(**overrides), activation_checkpointing)


register_network(NetworkFamily("toy-text", {"tiny": ToyConfig()}, "tiny", _build), replace=True)


class TextLatents(Dataset):
    """Latents paired with "text" embeddings (no class labels at all)."""

    def __init__(self, n=8):
        g = torch.Generator().manual_seed(0)
        self.latents = torch.randn(n, *LATENT, generator=g)
        self.text = torch.randn(n, 3, 6, generator=g)
        self.normalizer = LatentNormalizer(torch.zeros(LATENT[0]), torch.ones(LATENT[0]))
        self.manifest, self.root, self.policy = {"tokenizer": {}}, "memory", "test"

    def __len__(self):
        return len(self.latents)

    def __getitem__(self, i) -> dict[str, Any]:
        return {"latent": self.latents[i], "text": self.text[i]}


class TextDataModule(LightningDataModule):
    def __init__(self, n=4, batch_size=4):
        super().__init__()
        self.batch_size, self.dataset = batch_size, TextLatents(n)

    def train_dataloader(self):
        return DataLoader(self.dataset, batch_size=self.batch_size, drop_last=True)


def _module(**kw):
    args = dict(network="toy-text", preset="tiny", transport="reg", global_batch_size=4, lr=1e-2)
    return DiffusionModule(**{**args, **kw})


def test_toy_network_implements_the_interface():
    net = ToyTextDiT()
    assert isinstance(net, DiffusionNetwork)
    assert net.latent_shape == LATENT and net.num_blocks == 2


def _eval_mse(module, data) -> float:
    """The objective's MSE on the training latents over 32 fixed draws of t and noise (a stable yardstick)."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        return (
            sum(float(module.objective(module.net, data.latents, data.text, generator=g)["mse"]) for _ in range(32))
            / 32
        )


def test_toy_network_trains_through_the_diffusion_module():
    torch.manual_seed(0)
    module = _module()
    dm = TextDataModule(n=4, batch_size=4)  # one fixed batch: a small overfit
    before = _eval_mse(module, dm.dataset)
    rec = Recorder()
    fit(module, dm, [rec], max_steps=12)
    assert _eval_mse(module, dm.dataset) < before - 0.1  # the velocity regression learns (2.11 -> 1.96)
    # Latent-only state: mse + cos (cos weight 0 in the noise-at-one "reg" transport), no alignment terms.
    last = rec.rows[-1]["metrics"]
    assert {"loss/mse", "loss/cos", "loss/total"} <= set(last) and "loss/proj" not in last
    assert last["loss/total"] == last["loss/mse"] and math.isfinite(last["loss/total"])
    ckpt_meta = {}
    module.on_save_checkpoint(ckpt_meta)
    assert ckpt_meta["diffusion"]["network"]["family"] == "toy-text"


def test_toy_network_samples_with_its_own_null_condition():
    torch.manual_seed(0)
    net = ToyTextDiT()
    config = sampler_config(net, num_steps=4)  # the toy's paper preset: reg-cfg (SDE, CFG where t <= 0.8)
    text = net.condition.draw("balanced", 3)
    latents = sample_latents(net, config, text, generator=torch.Generator().manual_seed(1))
    assert latents.shape == (3, *LATENT) and torch.isfinite(latents).all()
    doubled = [c for c in net.calls if c.shape[0] == 6]
    assert doubled, "CFG never ran"
    assert torch.equal(doubled[0][3:], torch.zeros(3, 3, 6)) and torch.equal(doubled[0][:3], text)
    no_cfg = sampler_config(net, cfg_scale=1.0, num_steps=4)
    assert no_cfg.cfg_scale == 1.0 and no_cfg.method == "sde"


def test_toy_network_is_drawn_by_the_sample_grid_and_probed():
    torch.manual_seed(0)
    grid = SampleGridCallback(tokenizer=None, tokenizer_preset="debug", every_n_steps=1, num_samples=4, num_steps=3)
    fit(_module(), TextDataModule(n=4, batch_size=4), [grid], max_steps=1)
    assert grid.num_logged == 1 and grid.last_grid.dtype == torch.uint8
    assert grid.last_grid.shape == (3, 2 * 66 + 2, 2 * 66 + 2)  # 2x2 mosaic of 64 px decoded samples
    feats = dit_block_features(ToyTextDiT(), torch.randn(5, *LATENT), batch_size=2)
    assert set(feats) == {"block_0", "block_1", "final_layer"} and feats["block_1"].shape == (5, 32)
