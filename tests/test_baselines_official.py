"""What the two KL-autoencoder baselines share, against their official fixtures (SD-VAE through diffusers'
`AutoencoderKL`, VA-VAE through LightningDiT's `AutoencoderKL`): encoder output, posterior moments, KL, and
the decoder's intermediates and image, to 1e-5. Each family's own behaviour (inputs, RNG, uint8 conversion,
loaders) is tested in `test_baselines_sdvae.py` / `test_baselines_vavae.py`. Both converters are strict: an
unknown key and a missing one are named (the missing one by our module name)."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import close, official_fixture

from vfmvae.codec import signed_to_unit, uint8_to_unit
from vfmvae.tokenizer import from_diffusers_autoencoder, from_official_vavae

# family -> (build from (meta, state dict), our [0, 1] input from the fixture tensors)
BASELINES = {
    "sdvae": (lambda meta, sd: from_diffusers_autoencoder(sd, meta["diffusers_config"]), "inputs.img_uint8"),
    "vavae": (lambda meta, sd: from_official_vavae(sd, meta["ddconfig"]), "inputs.img"),
}
# family -> (an extra official key, an official key to drop, our name for the dropped one)
STRICT_KEYS = {
    # diffusers' up_blocks.0 is the lowest resolution: our level n-1 = 2
    "sdvae": (
        "encoder.extra_block.weight",
        "decoder.up_blocks.0.upsamplers.0.conv.weight",
        "decoder.levels.2.upsample.conv.weight",
    ),
    "vavae": ("model_ema.decay", "decoder.up.1.attn.0.q.weight", "decoder.levels.1.attns.0.q.weight"),
}


@pytest.fixture(scope="module", params=sorted(BASELINES))
def baseline(request):
    T, meta, sd = official_fixture(f"{request.param}_tiny")
    build, key = BASELINES[request.param]
    images01 = uint8_to_unit(T[key]) if T[key].dtype == torch.uint8 else signed_to_unit(T[key])
    return T, build(meta, sd).eval(), images01


def test_posterior_and_kl(baseline):
    T, model, images01 = baseline
    with torch.no_grad():
        posterior = model.encode(images01)
        close(model.encoder(T["inputs.img"]), T["intermediates.encoder_out"], "encoder_out")
    close(posterior.moments, T["outputs.moments"], "moments")
    close(posterior.mean, T["outputs.mean"], "mean")
    close(posterior.logvar, T["outputs.logvar"], "logvar")
    close(posterior.kl(), T["outputs.kl"], "kl", rtol=1e-6)  # a sum of thousands of terms: relative


def test_decode_intermediates_and_image(baseline):
    T, model, _ = baseline
    captured = {}
    hook = model.decoder.mid.register_forward_hook(lambda m, i, o: captured.setdefault("mid", o))
    try:
        with torch.no_grad():
            image = model.decode(T["outputs.z"])
            close(model.post_quant_conv(T["outputs.z"]), T["intermediates.post_quant"], "post_quant")
    finally:
        hook.remove()
    close(captured["mid"], T["intermediates.decoder_mid"], "decoder_mid")
    close(image, T["outputs.img"], "img")


@pytest.mark.parametrize("family", sorted(STRICT_KEYS))
def test_strict_keys_name_the_extra_and_the_missing(family):
    _, meta, sd = official_fixture(f"{family}_tiny")
    build = BASELINES[family][0]
    extra, dropped, ours = STRICT_KEYS[family]
    with pytest.raises(KeyError, match=rf"unknown keys {re.escape(extra)}"):
        build(meta, {**sd, extra: torch.zeros(1)})
    with pytest.raises(KeyError, match=rf"missing keys {re.escape(ours)}"):
        build(meta, {k: v for k, v in sd.items() if k != dropped})
