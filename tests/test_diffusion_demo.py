"""The real CLI: the demo config (demo latent cache built on first use) and both paper configs with tiny overrides on
the ImageNet DataModule's latents mode; event files and checkpoints read back."""

from __future__ import annotations

import pytest
import torch
import yaml


@pytest.mark.slow
@pytest.mark.parametrize("config", ["demo.yaml", "demo_reg.yaml"])
def test_demo_config_through_the_cli(config, tmp_path, monkeypatch, repo_root):
    from lightning_modules.cli import main

    monkeypatch.chdir(repo_root)
    root = tmp_path / "demo"
    main(
        [
            "fit",
            "--config",
            f"configs/diffusion/{config}",
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


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    from datamodules.demo_latents import build_demo_latent_cache

    return build_demo_latent_cache(tmp_path_factory.mktemp("cache"), num_per_class=1, resolution=64)


def _tiny_paper_config(name, repo_root, cache, out):
    """The paper YAML with tiny overrides only (debug shapes, CPU, 3 steps); everything else as shipped."""
    cfg = yaml.safe_load((repo_root / "configs" / "diffusion" / name).read_text())
    reg = name.startswith("reg")
    cfg["trainer"].update(
        accelerator="cpu",
        devices=1,
        strategy="auto",
        precision="32-true",
        max_steps=3,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = str(out)
    for cb in cfg["trainer"]["callbacks"]:
        args = cb.setdefault("init_args", {})
        if cb["class_path"].endswith("SampleGridCallback"):
            args.update(tokenizer=None, tokenizer_kwargs=None, tokenizer_preset="debug", every_n_steps=2, num_steps=3)
        if cb["class_path"].endswith("JointAlignmentCallback"):
            args.update(vfm="debug-dinov2", vfm_pretrained=None, image_size=56)
        if cb["class_path"].endswith("AtomicModelCheckpoint"):
            args.update(every_n_train_steps=3)
    model = cfg["model"]["init_args"]
    model.update(
        preset="debug", global_batch_size=4, network_overrides={"input_size": 4, **({"z_dims": [64]} if reg else {})}
    )
    if not reg:
        model["transport_overrides"]["uniform_from_step"] = 2  # the 600k switch, scaled down
    cfg["data"]["init_args"]["config"].update(latent_root=str(cache), batch_size=4, num_workers=0)
    path = out / name
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lightningdit_xl1_vfmvae.yaml", "reg_sitxl1_vfmvae.yaml"])
def test_paper_configs_run_a_few_steps_through_the_cli(name, small_cache, repo_root, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lightning_modules.cli import main

    monkeypatch.chdir(repo_root)
    main(["fit", "--config", str(_tiny_paper_config(name, repo_root, small_cache, tmp_path))])
    run = next(p.parent for p in tmp_path.rglob("events.out.tfevents*"))
    events = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert [e.step for e in events.Images("grid/samples")] == [2]
    if name.startswith("reg"):
        assert {"loss/proj", "loss/cls_mse", "loss/mse"} <= set(scalars)
    else:
        uniform = {e.step: e.value for e in events.Scalars("train/uniform_time")}
        assert uniform == {0: 0.0, 1: 0.0, 2: 1.0}  # logit-normal before the configured step, uniform from it
    ckpt = torch.load(next(run.rglob("last.ckpt")), map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3
    assert ckpt["diffusion"]["provenance"]["latent_root"] == str(small_cache)
