"""Text-to-image runs take only the inputs they were trained with (docs/design.md, "Checkpoints, resume and
provenance"): `sample-t2i` refuses a decoder other than the latent cache's tokenizer and latent statistics other
than the checkpoint's (as `vfmvae sample`), and the frozen text encoder's weights hash is recorded in the
checkpoint and checked on resume and by `sample-t2i`."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import save_tiny_causal_lm
from lightning.pytorch import Trainer
from transformers import Qwen2Model

from callbacks.ema import EMACallback
from datamodules.captions_demo import DemoCaptionDataModule
from lightning_modules.diffusion import DiffusionModule
from vfmvae.codec import LatentNormalizer
from vfmvae.dit.loading import load_sampling_network
from vfmvae.provenance import state_dict_sha256
from vfmvae.text.weights_record import check_text_encoders

OVERRIDES = {"input_size": 4, "num_queries": 3, "text_max_length": 12}


def _fit(root, lm, steps=1, ckpt=None, save=None):
    torch.manual_seed(0)
    module = DiffusionModule(
        network="text_dit",
        preset="debug",
        global_batch_size=4,
        network_overrides={**OVERRIDES, "text_encoder_path": str(lm)},
    )
    trainer = Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
        enable_model_summary=False,
        callbacks=[EMACallback(attributes=["net"], preset="dit")],
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=DemoCaptionDataModule(root=str(root), num_per_class=1, batch_size=4), ckpt_path=ckpt)
    if save:
        trainer.save_checkpoint(save)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(data root, LM folder, other LM folder, a 1-step checkpoint trained with the first LM)."""
    root = tmp_path_factory.mktemp("t2i_trust")
    lm, other = save_tiny_causal_lm(root / "lm", 3), save_tiny_causal_lm(root / "lm_other", 4)
    _fit(root / "data", lm, save=root / "run.ckpt")
    return root / "data", lm, other, root / "run.ckpt"


def _sample_argv(ckpt, out, *extra):
    return [
        "--ckpt",
        str(ckpt),
        "--prompts",
        str(out.parent / "prompts.txt"),
        "--out",
        str(out),
        "--weights",
        "raw",
        "--num-steps",
        "2",
        "--accelerator",
        "cpu",
        "--tokenizer-preset",
        "debug",
        *extra,
    ]


def _error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    return lines[-1]


def test_sample_t2i_refuses_another_tokenizer_and_other_statistics(trained, tmp_path, capsys):
    from lightning_modules.commands.sample_t2i import main
    from vfmvae.tokenizer import VFMVAE
    from vfmvae.tokenizer.export import read_export_config

    _, _, _, ckpt = trained
    (tmp_path / "prompts.txt").write_text("a close up of a brown cat\n")
    torch.manual_seed(1)
    VFMVAE("debug", decoder_only=True).save_pretrained(tmp_path / "export")
    export_hash = read_export_config(tmp_path / "export")["weights_sha256"]
    recorded = torch.load(ckpt, weights_only=True)["diffusion"]["provenance"]
    cache_hash = recorded["tokenizer"]["weights_sha256"]
    assert cache_hash and cache_hash != export_hash
    with pytest.raises(SystemExit) as info:
        main(_sample_argv(ckpt, tmp_path / "a", "--tokenizer", str(tmp_path / "export")))
    assert info.value.code == 2
    assert _error_line(capsys) == (
        f"vfmvae sample-t2i: error: the network was trained on latents of tokenizer {cache_hash[:12]}, but "
        f"--tokenizer is {export_hash[:12]}; decode with the same tokenizer (or pass --allow-tokenizer-mismatch)"
    )
    assert not (tmp_path / "a").exists()  # refused before anything was written

    other = tmp_path / "other_stats.pt"
    LatentNormalizer(torch.linspace(-0.5, 0.5, 8), torch.linspace(0.5, 1.5, 8)).save(other)
    with pytest.raises(SystemExit):
        main(_sample_argv(ckpt, tmp_path / "b", "--tokenizer", "none", "--latent-stats", str(other)))
    trained_hash = state_dict_sha256(
        {k: torch.tensor(recorded["latent_stats"][k]).reshape(1, -1, 1, 1) for k in ("mean", "std")}
    )
    line = _error_line(capsys)
    assert line.startswith(f"vfmvae sample-t2i: error: latent statistics --latent-stats {other} (sha256 ")
    assert (
        f"are not the ones recorded by the checkpoint (trained on {recorded['latent_root']}) "
        f"(sha256 {trained_hash[:12]})" in line
    )

    # The explicit opt-out samples with the other decoder.
    argv = _sample_argv(ckpt, tmp_path / "c", "--tokenizer", str(tmp_path / "export"), "--allow-tokenizer-mismatch")
    assert main(argv) == 0
    assert (tmp_path / "c" / "images" / "000000.png").is_file()


def test_text_encoder_hash_is_recorded_and_checked(trained, tmp_path, capsys, caplog):
    from lightning_modules.commands.sample_t2i import main

    data, lm, other, ckpt = trained
    (tmp_path / "prompts.txt").write_text("a grey brick wall\n")
    state = torch.load(ckpt, weights_only=True)
    lm_hash = state_dict_sha256(Qwen2Model.from_pretrained(lm))  # an independent build of the same folder
    other_hash = state_dict_sha256(Qwen2Model.from_pretrained(other))
    record = state["diffusion"]["provenance"]["text_encoders"]["text_encoder"]
    assert record["sha256"] == lm_hash and record["path"] == str(lm)

    # The checkpoint names another folder (weights replaced after training): sampling refuses it.
    state["hyper_parameters"]["network_overrides"]["text_encoder_path"] = str(other)
    torch.save(state, tmp_path / "moved.ckpt")
    with pytest.raises(SystemExit):
        main(_sample_argv(tmp_path / "moved.ckpt", tmp_path / "a", "--tokenizer", "none"))
    expected = (
        f"text encoder text_encoder at {other} has weights sha256 {other_hash[:12]}, but the run was "
        f"trained with {lm_hash[:12]} (at {lm}); point text_encoder_path at the weights it was trained with"
    )
    assert _error_line(capsys) == f"vfmvae sample-t2i: error: {expected}"
    assert not (tmp_path / "a").exists()

    # Resuming with another text encoder stops before training.
    with pytest.raises(ValueError) as info:
        _fit(data, other, steps=2, ckpt=str(ckpt))
    assert str(info.value) == expected

    # A checkpoint written before the hash was recorded: one warning, and sampling goes on.
    del state["diffusion"]["provenance"]["text_encoders"]
    state["hyper_parameters"]["network_overrides"]["text_encoder_path"] = str(lm)
    torch.save(state, tmp_path / "old.ckpt")
    caplog.set_level(logging.WARNING)
    assert main(_sample_argv(tmp_path / "old.ckpt", tmp_path / "b", "--tokenizer", "none")) == 0

    net = load_sampling_network(tmp_path / "old.ckpt", None, "raw")[0]
    check_text_encoders(net, None, source=f"the checkpoint {tmp_path / 'old.ckpt'}")
    warned = [r for r in caplog.records if "records no text encoder weights hash" in r.getMessage()]
    assert len(warned) == 1 and str(tmp_path / "old.ckpt") in warned[0].getMessage()
