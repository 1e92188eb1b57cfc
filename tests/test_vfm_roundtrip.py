"""Every family saves and reloads with identical outputs, in each on-disk format it reads.

Nothing downloads: the formats are written here from tiny random models (timm `save_for_hf`, an
OpenCLIP-style state dict, transformers folders, a full Qwen2.5-VL folder laid out as released:
`config.json` with `vision_config`, tower tensors under `visual.` next to the language model's).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from vfmvae.vfm import build_vfm

CASES = {  # preset, input side, layers
    "debug-siglip": (64, [0, 1, -1]),
    "debug-dinov2": (70, [0, 1, -1]),
    "debug-dinov2-hub": (70, [0, 2, -1]),
    "debug-eva": (56, [0, 2, -1]),
    "debug-mae": (128, [0, 2, -1]),
    "debug-qwen2.5-vl": (112, [0, 2, -1]),
}


def _images(side, seed=3):
    return torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(seed))


def _perturbed(name):
    torch.manual_seed(0)
    vfm = build_vfm(name)
    with torch.no_grad():
        for n, p in vfm.named_parameters():
            if "position_embeddings" not in n or "mae" not in name:  # MAE's sin-cos table is fixed
                p.add_(0.1 * torch.randn_like(p))
    return vfm


def _same(a, b, name):
    side, layers = CASES[name]
    x = _images(side)
    with torch.no_grad():
        for u, v in zip(a(x, layers), b(x, layers)):
            torch.testing.assert_close(u, v, atol=0, rtol=0)


@pytest.mark.parametrize("name", list(CASES))
def test_save_pretrained_round_trip(name, tmp_path):
    src = _perturbed(name)
    target = tmp_path / ("vfm.pth" if src.config.backend == "timm" and src.config.family != "eva" else "vfm")
    src.save_pretrained(target)
    loaded = build_vfm(name, pretrained=target)
    assert type(loaded) is type(src) and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    _same(src, loaded, name)


def test_eva_from_an_openclip_checkpoint(tmp_path):
    """OpenCLIP keeps the timm trunk under `visual.trunk.` next to the text tower and the CLIP head."""
    src = _perturbed("debug-eva")
    sd = {f"visual.trunk.{k}": v for k, v in src.backbone.state_dict().items()}
    sd["visual.trunk.head.weight"] = torch.zeros(8, 48)  # CLIP projection: not used by the tokenizer
    sd["text.token_embedding.weight"] = torch.zeros(10, 8)
    sd["logit_scale"] = torch.ones(())
    folder = tmp_path / "openclip"
    folder.mkdir()
    torch.save(sd, folder / "open_clip_pytorch_model.bin")
    _same(src, build_vfm("debug-eva", pretrained=folder), "debug-eva")
    _same(src, build_vfm("debug-eva", pretrained=folder / "open_clip_pytorch_model.bin"), "debug-eva")
    with pytest.raises(ValueError, match="does not match"):
        build_vfm("eva02-large-patch14-clip-336", pretrained=_saved(src, tmp_path / "tiny"))


def _saved(vfm, path):
    vfm.save_pretrained(path)
    return path


def test_mae_loads_at_another_native_size_with_its_sincos_table_rebuilt(tmp_path):
    from transformers import ViTMAEConfig
    from transformers.models.vit_mae.modeling_vit_mae import ViTMAEEmbeddings

    src = _perturbed("debug-mae")  # native 128 px
    loaded = build_vfm("debug-mae", pretrained=_saved(src, tmp_path / "mae"), config={"image_size": 64})
    fresh = ViTMAEEmbeddings(ViTMAEConfig(hidden_size=48, image_size=64))
    fresh.initialize_weights()  # transformers' own sin-cos table for a 4x4 grid
    table = loaded.backbone.embeddings.position_embeddings
    assert table.shape == (1, 17, 48)
    torch.testing.assert_close(table, fresh.position_embeddings, atol=1e-6, rtol=0)
    assert abs(float(table[0, 2, 0]) - math.sin(1.0)) < 1e-6  # token (row 0, col 1): sin of the column index
    same = {k: v for k, v in src.backbone.state_dict().items() if "position_embeddings" not in k}
    for k, v in same.items():
        torch.testing.assert_close(loaded.backbone.state_dict()[k], v, atol=0, rtol=0)
    with torch.no_grad():
        assert loaded(_images(64), [-1])[0].shape == (2, 16, 48)


def test_qwen_from_a_full_model_folder(tmp_path):
    src = _perturbed("debug-qwen2.5-vl")
    tower_cfg = json.loads((_saved(src, tmp_path / "tower") / "config.json").read_text())
    full = tmp_path / "Qwen2.5-VL-tiny"
    full.mkdir()
    config = {"model_type": "qwen2_5_vl", "vision_config": tower_cfg, "text_config": {"hidden_size": 16}}
    (full / "config.json").write_text(json.dumps(config))
    tensors = {f"visual.{k}": v.contiguous() for k, v in src.backbone.state_dict().items()}
    lm = {"model.embed_tokens.weight": torch.zeros(64, 16), "lm_head.weight": torch.zeros(64, 16)}
    save_file(dict(list(tensors.items())[:5]) | lm, str(full / "model-00001-of-00002.safetensors"))
    save_file(dict(list(tensors.items())[5:]), str(full / "model-00002-of-00002.safetensors"))
    _same(src, build_vfm("debug-qwen2.5-vl", pretrained=full), "debug-qwen2.5-vl")
    with pytest.raises(ValueError, match="merger width"):
        build_vfm("debug-qwen2.5-vl", pretrained=full, config={"extra": {"out_hidden_size": 2048}})
    with pytest.raises(ValueError, match="from a folder"):
        build_vfm("debug-qwen2.5-vl", pretrained=full / "model-00001-of-00002.safetensors")
