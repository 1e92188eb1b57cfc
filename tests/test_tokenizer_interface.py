"""The tokenizer interface (`vfmvae.tokenizer.interface`): conformance, input checks and provenance records."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from vfmvae.baselines import KLAutoencoder, from_ldm_ddconfig
from vfmvae.provenance import state_dict_sha256
from vfmvae.tokenizer import Posterior, Tokenizer, check_tokenizer
from vfmvae.tokenizer.interface import tokenizer_weights_sha256


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = from_ldm_ddconfig({"ch": 32, "ch_mult": [1, 1], "num_res_blocks": 1, "z_channels": 4, "resolution": 16})
    return KLAutoencoder(cfg).eval()


def test_baselines_are_tokenizers_and_posteriors(tiny):
    assert isinstance(tiny, Tokenizer)
    assert check_tokenizer(tiny) is tiny
    with torch.no_grad():
        assert isinstance(tiny.encode(torch.rand(1, 3, 16, 16)), Posterior)


def test_check_tokenizer_names_what_is_missing():
    with pytest.raises(TypeError, match=r"Linear is not a tokenizer: it lacks kind, latent_channels, .*provenance"):
        check_tokenizer(nn.Linear(2, 2))


def test_encode_takes_unit_range_images_and_uint8(tiny):
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        from_float = tiny.encode(x).mean
        u8 = (x * 255).round().to(torch.uint8)
        assert torch.equal(tiny.encode(u8).mean, tiny.encode(u8.float() / 255).mean)
    assert from_float.shape == (2, 4, 8, 8)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\].*signed_to_unit"):
        tiny.encode(x * 2 - 1)
    with pytest.raises(ValueError, match="not a multiple of the downsampling factor 2"):
        tiny.encode(torch.rand(1, 3, 15, 16))
    with pytest.raises(ValueError, match=r"must be \(B, 3, H, W\)"):
        tiny.encode(torch.rand(3, 16, 16))
    with pytest.raises(ValueError, match=r"z must be \(B, 4, h, w\)"):
        tiny.decode(torch.zeros(1, 3, 8, 8))


def test_provenance_record_and_weights_hash(tiny):
    record = tiny.provenance()
    json.dumps(record)  # JSON-able as it is
    assert record["kind"] == "vavae" and record["latent_channels"] == 4 and record["downsample_factor"] == 2
    assert record["weights_sha256"] == state_dict_sha256(tiny.state_dict())
    assert record["config"]["channels"] == [32, 32] and record["source"] is None
    changed = KLAutoencoder(tiny.cfg)
    changed.load_state_dict(tiny.state_dict())
    assert changed.weights_sha256() == tiny.weights_sha256()
    with torch.no_grad():
        changed.decoder.conv_out.bias[0] += 1e-6
    assert changed.weights_sha256() != tiny.weights_sha256()


def test_weights_hash_matches_the_vfmvae_export_convention(tmp_path):
    """With `frozen_prefixes=("vfm.",)` the interface hash is the `weights_sha256` that export folders record."""
    from vfmvae.tokenizer import VFMVAE

    torch.manual_seed(0)
    model = VFMVAE("debug", decoder_only=True)
    record = model.save_pretrained(tmp_path / "export")
    assert tokenizer_weights_sha256(model, ("vfm.",)) == record["weights_sha256"]
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert tokenizer_weights_sha256(model, ("vfm.",)) != record["weights_sha256"]
