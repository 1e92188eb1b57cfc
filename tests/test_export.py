"""Tokenizer export folders (`vfmvae/tokenizer/export.py`): round trips, hashes, VFM handling, official files."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from conftest import official_fixture
from safetensors.torch import load_file

from vfmvae.tokenizer import VFMVAE, from_official, get_config
from vfmvae.tokenizer.export import CONFIG_NAME, VFM_WEIGHTS_NAME, WEIGHTS_NAME, load_tokenizer, save_pretrained


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return VFMVAE(get_config("debug", use_vf_projection=True)).eval()


def _independent_sha256(state: dict[str, torch.Tensor]) -> str:
    # Same recipe as the documented provenance hash, written out here with hashlib only.
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def test_round_trip_full_and_decoder_only(model, tmp_path):
    record = model.save_pretrained(tmp_path, weights="ema", provenance={"stage": 0, "global_nimg": 123})
    on_disk = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert on_disk == record and on_disk["weights"] == "ema" and on_disk["provenance"]["global_nimg"] == 123
    weights = load_file(str(tmp_path / WEIGHTS_NAME))
    assert not any(k.startswith("vfm.") for k in weights), "the VFM must not be inside model.safetensors"
    assert on_disk["weights_sha256"] == _independent_sha256(weights)
    # A random-init VFM cannot be rebuilt from a path, so it was included.
    assert on_disk["vfm"]["included"] and (tmp_path / VFM_WEIGHTS_NAME).is_file()

    loaded = VFMVAE.from_pretrained(tmp_path)
    for (k, a), (k2, b) in zip(sorted(model.state_dict().items()), sorted(loaded.state_dict().items())):
        assert k == k2 and torch.equal(a, b), k
    x, eps = torch.rand(2, 3, 64, 64), torch.randn(2, 8, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, eps=eps).image, model(x, eps=eps).image, atol=0, rtol=0)

    dec = VFMVAE.from_pretrained(tmp_path, decoder_only=True)
    assert dec.vfm is None and dec.head is None
    with torch.no_grad():
        torch.testing.assert_close(dec.decode(eps), model.decode(eps), atol=0, rtol=0)


def test_decoder_only_never_builds_the_vfm(model, tmp_path, monkeypatch):
    model.save_pretrained(tmp_path)
    import vfmvae.vfm

    def boom(*a, **k):
        raise AssertionError("decoder-only loading built a VFM")

    monkeypatch.setattr(vfmvae.vfm, "build_vfm", boom)
    dec = VFMVAE.from_pretrained(tmp_path, decoder_only=True)
    assert not dec.has_encoder


def test_vfm_from_a_local_folder_is_recorded_not_copied(model, tmp_path):
    vfm_dir = tmp_path / "siglip"
    model.vfm.save_pretrained(vfm_dir)
    export = tmp_path / "export"
    record = save_pretrained(model, export, vfm_pretrained=vfm_dir)
    assert record["vfm"]["included"] is False and record["vfm"]["pretrained"] == str(vfm_dir.resolve())
    assert not (export / VFM_WEIGHTS_NAME).exists()
    loaded = VFMVAE.from_pretrained(export)
    assert loaded.vfm_pretrained == str(vfm_dir.resolve())
    x, eps = torch.rand(2, 3, 64, 64), torch.randn(2, 8, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, eps=eps).image, model(x, eps=eps).image, atol=0, rtol=0)
    # Different VFM weights at load time are caught by the recorded hash.
    other = VFMVAE(get_config("debug"))
    other.vfm.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="differ from the ones the tokenizer was trained with"):
        VFMVAE.from_pretrained(export, vfm_pretrained=tmp_path / "other")
    with pytest.raises(FileNotFoundError, match="vfm_pretrained"):
        VFMVAE.from_pretrained(export, vfm_pretrained=tmp_path / "missing")


def test_corrupted_weights_and_bad_folders_are_errors(model, tmp_path):
    model.save_pretrained(tmp_path)
    sd = load_file(str(tmp_path / WEIGHTS_NAME))
    key = next(iter(sd))
    sd[key] = sd[key] + 1
    from safetensors.torch import save_file

    save_file(sd, str(tmp_path / WEIGHTS_NAME))
    with pytest.raises(ValueError, match="weights hash"):
        VFMVAE.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        VFMVAE.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="neither an export folder"):
        load_tokenizer(tmp_path / "nowhere.pth")


def test_official_release_file_and_export_reproduce_the_fixture(fixtures_dir, tmp_path):
    tensors, meta, sd = official_fixture("vfmvae_tiny")
    release = tmp_path / "release.pth"
    torch.save({"G_ema": sd}, release)
    kwargs_file = tmp_path / "kwargs.json"
    kwargs_file.write_text(json.dumps({"generator_kwargs": meta["generator_kwargs"]}))
    with pytest.raises(ValueError, match="generator_kwargs"):
        load_tokenizer(release)
    dec = load_tokenizer(release, decoder_only=True, generator_kwargs=kwargs_file)
    with torch.no_grad():
        torch.testing.assert_close(dec.decode(tensors["outputs.z"]), tensors["outputs.img"], atol=1e-5, rtol=0)

    full = from_official(sd, meta["generator_kwargs"], meta["siglip_vision_config"], vfm_dtype="float32")
    full.save_pretrained(tmp_path / "export")
    reloaded = load_tokenizer(tmp_path / "export")
    with torch.no_grad():
        out = reloaded(tensors["inputs.img"], eps=tensors["inputs.eps"])
    torch.testing.assert_close(out.image, tensors["outputs.img"], atol=1e-5, rtol=0)
