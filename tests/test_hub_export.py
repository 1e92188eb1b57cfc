"""Hub-compatible exports (docs/export.md): ``ModelHubMixin`` round trips offline (folder and cached Hub id), the
earlier tokenizer format, the model card's provenance, ``push_to_hub`` without a network, the DiT export and
its commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, ModelHubMixin
from safetensors.torch import load_file

from vfmvae.dit import build_diffusion_network
from vfmvae.dit.export import DiffusionNetworkExport
from vfmvae.tokenizer import VFMVAE, get_config
from vfmvae.tokenizer.config import VFMVAEConfig

PRE_REDESIGN = "tests/fixtures/pre_redesign/tokenizer_export"  # written by the code before this format (/1)
DIT_BUILD = {"network": "lightningdit", "preset": "debug", "network_overrides": {"input_size": 4}}


@pytest.fixture(scope="module")
def tokenizer():
    torch.manual_seed(0)
    return VFMVAE(get_config("debug")).eval()


def _same_tokenizer(a, b):
    torch.manual_seed(1)
    z, x = torch.randn(2, 8, 4, 4), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(a.decode(z), b.decode(z))
        assert torch.equal(a.encode(x).mean, b.encode(x).mean)


def _fake_hub_cache(cache, repo_id, folder):
    """The layout `snapshot_download` reads offline: models--owner--name/{refs/main, snapshots/<commit>/...}."""
    commit = "0" * 40
    root = cache / f"models--{repo_id.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    shutil.copytree(folder, root / "snapshots" / commit)


def test_tokenizer_round_trip_through_the_mixin_offline(tokenizer, tmp_path):
    assert isinstance(tokenizer, ModelHubMixin)
    record = tokenizer.save_pretrained(tmp_path / "tok", weights="ema", provenance={"global_nimg": 4096})
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "vfm.safetensors",  # a random VFM cannot be rebuilt from a path: included
    ]
    assert record == json.loads((tmp_path / "tok" / "config.json").read_text())
    assert record["format"] == "vfmvae-tokenizer/2" and VFMVAEConfig.from_dict(record["config"]) == tokenizer.cfg
    loaded = VFMVAE.from_pretrained(tmp_path / "tok")
    _same_tokenizer(loaded, tokenizer)
    assert not loaded.training and loaded.export_record["weights"] == "ema"

    # the same folder as a Hub repository id, from the local cache only (no network)
    _fake_hub_cache(tmp_path / "cache", "someone/vfmvae-debug", tmp_path / "tok")
    _same_tokenizer(VFMVAE.from_pretrained("someone/vfmvae-debug", cache_dir=tmp_path / "cache"), tokenizer)
    with pytest.raises(FileNotFoundError, match="local_files_only=False"):
        VFMVAE.from_pretrained("someone/absent", cache_dir=tmp_path / "cache")


def test_old_format_export_loads(repo_root, tmp_path):
    folder = repo_root / PRE_REDESIGN
    old = json.loads((folder / "config.json").read_text())
    assert old["format"] == "vfmvae-tokenizer/1" and not (folder / "README.md").exists()
    loaded = VFMVAE.from_pretrained(folder)
    # independent rebuild: the config dict, the VFM and the weights files read by hand
    from vfmvae.vfm import build_vfm

    vfm = build_vfm(old["vfm"]["name"], config=old["vfm"]["config_overrides"])
    vfm.load_state_dict(load_file(str(folder / "vfm.safetensors")))
    by_hand = VFMVAE(VFMVAEConfig.from_dict(old["config"]), vfm=vfm).eval()
    by_hand.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
    _same_tokenizer(loaded, by_hand)
    # re-exported in the new format, with the old provenance: same weights hash, a card
    record = loaded.save_pretrained(tmp_path / "new", weights=old["weights"], provenance=old["provenance"])
    assert record["weights_sha256"] == old["weights_sha256"] and (tmp_path / "new" / "README.md").is_file()


def test_card_lists_what_the_model_is_and_its_provenance(tokenizer, tmp_path):
    provenance = {"global_nimg": 123456, "stage_name": "strong_alignment", "source_sha256": "ab" * 32}
    metrics = {"kind": "reconstruction", "results": {"psnr": 25.25, "rfid": None}, "protocol": {}}
    record = tokenizer.save_pretrained(tmp_path / "tok", provenance=provenance, metrics=metrics)
    card = ModelCard.load(tmp_path / "tok" / "README.md")
    assert card.data.library_name == "vfmvae" and "arxiv:2510.18457" in card.data.tags
    text = card.text
    for fact in (
        record["weights_sha256"],  # the weights
        record["vfm"]["weights_sha256"],  # the frozen VFM
        "ab" * 32,  # a hash of the training provenance
        "123456",  # training images seen
        "strong_alignment",
        "reconstruction/psnr | 25.2500",
        "arxiv.org/abs/2510.18457",
    ):
        assert fact in text, fact
    assert record["metrics"] == {"reconstruction/psnr": 25.25, "reconstruction/rfid": None}


def test_push_to_hub_uploads_the_export_folder(tokenizer, monkeypatch):
    from huggingface_hub import HfApi

    seen = {}

    def create_repo(self, repo_id, **kwargs):
        return type("Repo", (), {"repo_id": repo_id})()

    def upload_folder(self, repo_id, folder_path, **kwargs):
        seen.update(repo_id=repo_id, files=sorted(p.name for p in Path(folder_path).iterdir()))
        seen["card"] = (Path(folder_path) / "README.md").read_text()
        return type("Commit", (), {"commit_url": f"https://hub/{repo_id}/commit/1"})()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    url = tokenizer.push_to_hub("someone/tok", weights="ema", metrics={"psnr": 30.0})
    assert url == "https://hub/someone/tok/commit/1" and seen["repo_id"] == "someone/tok"
    assert seen["files"] == ["README.md", "config.json", "model.safetensors", "vfm.safetensors"]
    assert "psnr | 30.0000" in seen["card"]


def _training_checkpoint(path):
    """A DiffusionModule-shaped checkpoint: live weights, EMA weights (= live + 1), provenance, 12 steps."""
    torch.manual_seed(0)
    net = build_diffusion_network("lightningdit", "debug", {"input_size": 4})
    live = {f"net.{k}": v for k, v in net.state_dict().items()}
    ema = {k: v + 1 for k, v in live.items() if v.is_floating_point()}
    torch.save(
        {
            "hyper_parameters": {**DIT_BUILD, "global_batch_size": 16, "transport": "lightningdit"},
            "state_dict": live,
            "callbacks": {"EMACallback{}": {"ema": {"params": ema}}},
            "global_step": 12,
            "diffusion": {"provenance": {"tokenizer": {"weights_sha256": "cd" * 32}, "latent_stats": {"mean": [0.0]}}},
        },
        path,
    )
    return net, ema


def test_dit_export_round_trip_from_a_checkpoint_and_the_commands(tmp_path, capsys):
    from vfmvae.commands.export_dit import run as export_run
    from vfmvae.commands.push_to_hub import run as push_run
    from vfmvae.dit.loading import load_sampling_network

    net, ema = _training_checkpoint(tmp_path / "run.ckpt")
    (tmp_path / "adm.json").write_text(json.dumps({"kind": "adm", "results": {"fid": 12.5}, "protocol": {}}))
    record = export_run(["--ckpt", str(tmp_path / "run.ckpt"), "--out", str(tmp_path / "dit")])
    assert record["format"] == "vfmvae-dit/1" and record["weights"] == "ema"
    assert record["provenance"]["images_seen"] == 12 * 16 and record["provenance"]["optimizer_steps"] == 12
    loaded = DiffusionNetworkExport.from_pretrained(tmp_path / "dit")
    for name, value in loaded.network.state_dict().items():
        assert torch.equal(value, ema.get(f"net.{name}", net.state_dict()[name])), name  # the EMA weights
    _, family, source, provenance = load_sampling_network(tmp_path / "dit")  # `vfmvae sample --ckpt FOLDER`
    assert family == "lightningdit" and source["kind"] == "export"
    assert provenance["tokenizer"]["weights_sha256"] == "cd" * 32 and provenance["latent_stats"] == {"mean": [0.0]}
    card = (tmp_path / "dit" / "README.md").read_text()
    assert record["weights_sha256"] in card and "cd" * 32 in card and "192" in card

    assert push_run([str(tmp_path / "dit"), "--metrics", str(tmp_path / "adm.json"), "--no-upload"]) is None
    assert "adm/fid | 12.5000" in (tmp_path / "dit" / "README.md").read_text()
    assert DiffusionNetworkExport.from_pretrained(tmp_path / "dit").metrics == {"adm/fid": 12.5}


def test_dit_export_refuses_a_changed_weights_file(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = build_diffusion_network("lightningdit", "debug", {"input_size": 4})
    DiffusionNetworkExport(net, DIT_BUILD, weights="raw").save_pretrained(tmp_path / "dit")
    state = load_file(str(tmp_path / "dit" / "model.safetensors"))
    name = next(iter(state))
    state[name] = state[name] + 1
    save_file(state, str(tmp_path / "dit" / "model.safetensors"))
    with pytest.raises(ValueError, match="weights hash"):
        DiffusionNetworkExport.from_pretrained(tmp_path / "dit")
