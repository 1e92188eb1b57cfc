"""The real CLI on the demo config: demo latent cache built on first use, a few steps, checkpoint provenance."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.slow
def test_demo_config_through_the_cli(tmp_path, monkeypatch, repo_root):
    from lightning_modules.cli import main

    monkeypatch.chdir(repo_root)
    root = tmp_path / "demo"
    main(
        [
            "fit",
            "--config",
            "configs/diffusion/demo.yaml",
            "--trainer.max_steps=4",
            "--trainer.log_every_n_steps=1",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'tb'}",
            f"--data.init_args.root={root}",
            "--data.init_args.num_per_class=2",
            "--model.init_args.global_batch_size=8",
            "--trainer.enable_progress_bar=false",
        ]
    )
    manifest = (root / "latents" / "manifest.json").read_text()
    assert '"latent_shape": [\n  8,\n  4,\n  4\n ]' in manifest or '"latent_shape": [8, 4, 4]' in manifest
    ckpt = next((tmp_path / "tb").rglob("last.ckpt"))
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["global_step"] == 4
    prov = state["diffusion"]["provenance"]
    assert len(prov["tokenizer"]["weights_sha256"]) == 64 and len(prov["latent_stats"]["mean"][0]) == 8
    assert any(k.startswith("EMACallback") for k in state["callbacks"])
