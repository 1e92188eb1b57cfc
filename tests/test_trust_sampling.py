"""Sampling (`vfmvae sample`) and sample grids decode only with the tokenizer and statistics the latents were made with."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer
from test_diffusion_helpers import LATENT, TinyLatentDataModule, fit, tiny_module

from callbacks.sample_grid import SampleGridCallback
from vfmvae.codec import LatentNormalizer
from vfmvae.provenance import state_dict_sha256


def _stats_hash(normalizer: LatentNormalizer) -> str:
    return state_dict_sha256({k: v.float() for k, v in normalizer.stats_dict().items()})


def _fit(datamodule, callbacks=(), max_steps: int = 1) -> Trainer:
    # Lightning's default sanity steps, as this test was written with (the shared helper turns them off)
    return fit(tiny_module("lightningdit"), datamodule, callbacks, max_steps, num_sanity_val_steps=2)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A decoder-only debug tokenizer export folder and its recorded weights hash."""
    from vfmvae.tokenizer import VFMVAE
    from vfmvae.tokenizer.export import read_export_config

    folder = tmp_path_factory.mktemp("tok") / "export"
    torch.manual_seed(1)
    VFMVAE("debug", decoder_only=True).save_pretrained(folder)
    return folder, read_export_config(folder)["weights_sha256"]


def test_sample_grid_refuses_a_tokenizer_other_than_the_caches(export):
    folder, export_hash = export
    grid = SampleGridCallback(tokenizer=str(folder), tokenizer_preset="debug", every_n_steps=1, num_samples=2)
    with pytest.raises(ValueError) as info:  # the demo cache names tokenizer "test-tokenizer"
        _fit(TinyLatentDataModule(n=4), [grid])
    assert str(info.value) == (
        f"the network was trained on latents of tokenizer test-tokeniz, but SampleGridCallback.tokenizer {folder} "
        f"is {export_hash[:12]}; give the tokenizer the latent cache memory was made with"
    )
    dm = TinyLatentDataModule(n=4)
    dm.dataset.manifest["tokenizer"]["weights_sha256"] = export_hash
    grid = SampleGridCallback(
        tokenizer=str(folder), tokenizer_preset="debug", every_n_steps=1, num_samples=2, num_steps=2
    )
    _fit(dm, [grid])
    assert grid.num_logged == 1 and grid.last_grid.dtype == torch.uint8


def test_sample_grid_refuses_statistics_of_another_cache(tmp_path):
    dm = TinyLatentDataModule(n=4)
    dm.dataset.manifest["latent_stats"] = {"sha256": _stats_hash(dm.dataset.normalizer)}
    other = tmp_path / "latents_stats.pt"
    LatentNormalizer(torch.full((LATENT[0],), 0.5), torch.full((LATENT[0],), 2.0)).save(other)
    grid = SampleGridCallback(tokenizer=None, tokenizer_preset="debug", latent_stats=str(other), every_n_steps=1)
    with pytest.raises(
        ValueError, match=f"latent statistics SampleGridCallback.latent_stats {other} .* another latent cache"
    ):
        _fit(dm, [grid])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A 1-step checkpoint trained on latents normalised by ``dm.dataset.normalizer`` (recorded in it)."""
    root = tmp_path_factory.mktemp("ckpt")
    trainer = _fit(TinyLatentDataModule(n=4))
    trainer.save_checkpoint(root / "run.ckpt")
    return root / "run.ckpt"


def test_sample_command_refuses_statistics_the_network_was_not_trained_with(checkpoint, tmp_path, capsys):
    from lightning_modules.commands.sample import main

    trained = TinyLatentDataModule(n=4).dataset.normalizer  # what the checkpoint recorded
    other = tmp_path / "other_stats.pt"
    LatentNormalizer(torch.linspace(-0.5, 0.5, LATENT[0]), torch.linspace(0.5, 1.5, LATENT[0])).save(other)
    argv = ["--ckpt", str(checkpoint), "--weights", "raw", "--tokenizer", "none", "--tokenizer-preset", "debug"]
    argv += ["--out", str(tmp_path / "o"), "--num-images", "1", "--num-steps", "2"]
    with pytest.raises(SystemExit) as info:
        main([*argv, "--latent-stats", str(other), "--accelerator", "cpu"])
    assert info.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == (
        f"vfmvae sample: error: latent statistics --latent-stats {other} (sha256 {_stats_hash(LatentNormalizer.load(other))[:12]}) "
        f"are not the ones recorded by the checkpoint (trained on memory) (sha256 {_stats_hash(trained)[:12]}): they "
        "come from another latent cache; omit --latent-stats to use the recorded statistics, or give "
        "memory/latents_stats.pt"
    )
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_sampling_inputs_accept_the_recorded_statistics_and_warn_once_without_a_record(tmp_path, caplog):
    from vfmvae.provenance_checks import sampling_inputs
    from vfmvae.tokenizer.loading import load_decoder

    stats = LatentNormalizer(torch.linspace(-0.5, 0.5, 4), torch.linspace(0.5, 1.5, 4))
    path = tmp_path / "latents_stats.pt"
    stats.save(path)
    decoder = load_decoder(None, "debug")
    recorded = {
        "tokenizer": {"weights_sha256": "t"},
        "latent_stats": {k: v.tolist() for k, v in stats.stats_dict().items()},
    }
    normalizer, _, cache_hash = sampling_inputs(decoder, recorded, str(path))
    assert cache_hash == "t" and torch.equal(normalizer.std, stats.std)
    old = {"tokenizer": {"weights_sha256": "t"}, "latent_root": str(tmp_path / "old-cache")}
    for _ in range(2):
        sampling_inputs(decoder, old, str(path))
    warned = [r for r in caplog.records if "records no hash of its latent statistics" in r.getMessage()]
    assert len(warned) == 1
