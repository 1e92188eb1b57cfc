"""The second diffusion family on another tokenizer's latents: REG (SiT + class token, joint alignment) trains on a
tiny random VA-VAE's latent cache through the same CLI config as on VFM-VAE latents, and its checkpoint records
the VA-VAE's weights hash (the LightningDiT path, with sampling, is `tests/test_table1.py`)."""

from __future__ import annotations

import json

import torch


def test_reg_trains_on_vavae_latents(tmp_path, repo_root):
    from lightning_modules.cli import main as cli_main

    cli = cli_main(["fit", "--config", str(repo_root / "configs/diffusion/demo_reg.yaml"),
                    f"--data.init_args.root={tmp_path}", "--data.init_args.tokenizer_preset=debug-vavae",
                    "--data.init_args.num_per_class=2", "--trainer.max_steps=3",
                    f"--trainer.logger.init_args.save_dir={tmp_path / 'tb'}"])  # fmt: skip
    manifest = json.loads((tmp_path / "latents" / "manifest.json").read_text())
    assert manifest["tokenizer"]["kind"] == "vavae" and manifest["latent_shape"] == [8, 4, 4]
    assert cli.trainer.global_step == 3 and cli.model.network == "reg"
    ckpt = torch.load(next((tmp_path / "tb").rglob("last.ckpt")), map_location="cpu", weights_only=False)
    provenance = ckpt["diffusion"]["provenance"]["tokenizer"]
    assert provenance["kind"] == "vavae" and provenance["weights_sha256"] == manifest["tokenizer"]["weights_sha256"]
