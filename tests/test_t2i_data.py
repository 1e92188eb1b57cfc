"""Caption data (datamodules/captions*.py): cleaning, both layouts with bad captions, the caption
sidecar beside a latent cache, stored text features."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.captions import CaptionFolderSource, clean_caption, iter_caption_shards
from datamodules.captions_cache import CaptionLatentDataset, write_caption_sidecar
from datamodules.captions_datamodule import CaptionDataModule
from datamodules.captions_demo import DEMO_CAPTIONS, DemoCaptionDataModule
from datamodules.demo_data import DEMO_CLASSES


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_clean_caption():
    assert clean_caption("  A <b>red</b>&amp;amp; blue\n\tcar  ") == "A red & blue car"
    assert clean_caption("see https://x.org/a.jpg now\u200b") == "see now"
    assert clean_caption('"quoted"') == "quoted"
    assert clean_caption(None) == "" and clean_caption(42) == "" and clean_caption("  <br> ") == ""
    assert clean_caption(b"bytes caption") == "bytes caption"


def _folder(tmp_path):
    root = tmp_path / "pairs"
    (root / "g1").mkdir(parents=True)
    for i, key in enumerate(["k0", "k1", "k2", "k3"]):
        (root / "g1" / f"{key}.png").write_bytes(_png(i))
    lines = [
        {"key": "k0", "caption": "a red cat"},
        {"file": "g1/k1.png", "text": "  a <i>blue</i> dog "},
        {"key": "k2", "caption": "<br>   "},
        {"key": "zz", "caption": "no image"},
    ]  # k3: no entry
    (root / "captions.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return root


def test_caption_folder_policies(tmp_path):
    root = _folder(tmp_path)
    src = CaptionFolderSource(root, "skip")
    assert [r.key for r in src] == ["k0", "k1"] and src[1].caption == "a blue dog" and src.skipped == ["k2", "k3"]
    assert [r.caption for r in CaptionFolderSource(root, "null")] == ["a red cat", "a blue dog", "", ""]
    with pytest.raises(ValueError, match="'k2' has no usable caption"):
        CaptionFolderSource(root, "error")
    with (root / "captions.jsonl").open("a") as f:
        f.write("{not json\n")
    with pytest.raises(ValueError, match="captions.jsonl:5: not valid JSON"):
        CaptionFolderSource(root)


def test_caption_datamodule_images_both_layouts(tmp_path):
    dm = CaptionDataModule(
        mode="images",
        source="folder",
        data_root=str(_folder(tmp_path)),
        image_size=32,
        batch_size=2,
        num_workers=0,
        shuffle=False,
    )
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["image"].dtype == torch.uint8
    assert batch["caption"] == ["a red cat", "a blue dog"]
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tar:
        members = [
            ("s0.jpg", _png(0)),
            ("s0.txt", b"a cat &amp; a dog"),
            ("s1.png", _png(1)),
            ("s1.json", json.dumps({"caption": "a sunset"}).encode()),
            ("s2.png", _png(2)),
            ("s2.json", b"{broken"),
            ("s3.txt", b"caption without image"),
            ("s4.png", _png(4)),
            ("s4.txt", b"   "),
        ]
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert [(r.key, r.caption) for r in iter_caption_shards([str(shard)])] == [
        ("s0", "a cat & a dog"),
        ("s1", "a sunset"),
    ]
    assert [r.caption for r in iter_caption_shards([str(shard)], "null")] == ["a cat & a dog", "a sunset", "", ""]
    dm = CaptionDataModule(
        mode="images", source="webdataset", data_root=str(tmp_path), image_size=32, batch_size=2, num_workers=0
    )
    batch = next(iter(dm.train_dataloader()))
    assert batch["caption"] == ["a cat & a dog", "a sunset"] and batch["image"].shape == (2, 3, 32, 32)


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory):
    dm = DemoCaptionDataModule(root=str(tmp_path_factory.mktemp("demo")), num_per_class=1, batch_size=5)
    dm.setup("fit")
    return dm


def test_cache_with_captions_and_features(demo_cache):
    ds = demo_cache.dataset
    assert len(ds) == len(DEMO_CLASSES) and demo_cache.latent_shape == (8, 4, 4)
    for i in range(len(ds)):
        item = ds[i]
        assert item["caption"] == DEMO_CAPTIONS[DEMO_CLASSES[item["label"]]]
    batch = next(iter(demo_cache.train_dataloader()))
    assert batch["latent"].shape == (5, 8, 4, 4) and len(batch["caption"]) == 5
    # Rewrite the sidecar with a bad caption and SigLIP text features.
    from vfmvae.text import TextCondition, build_text_encoder

    root = ds.root
    keys = [ds[i]["key"] for i in range(len(ds))]
    captions = {k: f"<p>photo {i}</p>" for i, k in enumerate(keys)}
    captions[keys[3]] = "   "
    enc, tok = build_text_encoder("siglip_text")
    cond = TextCondition(tok, 8)
    manifest = write_caption_sidecar(
        root,
        captions,
        text_encoder=enc,
        encode_prompts=cond.encode,
        encoder_record={"kind": "siglip_text", "preset": "debug"},
    )
    assert manifest["num_kept"] == len(keys) - 1 and manifest["skipped"] == [keys[3]]
    with_feats = CaptionLatentDataset(root, use_text_features=True)
    assert len(with_feats) == len(keys) - 1 and with_feats[3]["key"] == keys[4]
    assert with_feats[0]["caption"] == "photo 0"
    torch.testing.assert_close(with_feats[3]["text_features"], enc(cond.encode(["photo 4"]))[0])
    query_enc, _ = build_text_encoder("causal_lm", num_queries=2)
    with pytest.raises(ValueError, match="without trained parts"):
        write_caption_sidecar(root, captions, text_encoder=query_enc, encode_prompts=cond.encode)
