"""Text-to-image evaluation (`vfmvae evaluate-t2i`): CLIP score through torchmetrics with a tiny random
local CLIP (checked against the CLIP model's own embeddings), FID against a reference folder."""

from __future__ import annotations

import json
import os
import string
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

from vfmvae.commands import evaluate_t2i
from vfmvae.commands._errors import InputError
from vfmvae.metrics.inception import random_inception_weights


def _tiny_clip(folder):
    folder.mkdir()
    chars = list(string.ascii_lowercase + string.digits + ".,!?'-")
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    proc = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tok,
    )
    n = len(vocab)
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=n,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=n - 2,
            eos_token_id=n - 1,
            pad_token_id=n - 1,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder


def _samples(folder, images, prompts):
    (folder / "images").mkdir(parents=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / "images" / f"{i:06d}.png")
    rows = [{"index": i, "prompt_index": i, "prompt": p} for i, p in enumerate(prompts)]
    (folder / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_clip_score_matches_the_clip_embeddings(tmp_path):
    clip = _tiny_clip(tmp_path / "clip")
    model, proc = CLIPModel.from_pretrained(clip).eval(), CLIPProcessor.from_pretrained(clip)
    prompts = ["a red cat", "a blue dog", "the moon"]

    def mean_cos(images):
        with torch.no_grad():
            out = model(
                **proc(
                    text=prompts,
                    images=list(torch.from_numpy(images).permute(0, 3, 1, 2)),
                    return_tensors="pt",
                    padding=True,
                )
            )
        return float(torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds).mean())

    # torchmetrics' definition: max(100 * mean cos(E_I, E_C), 0); pick images where it is not clamped.
    for seed in range(20):
        images = np.random.default_rng(seed).integers(0, 255, (3, 48, 48, 3), dtype=np.uint8)
        if mean_cos(images) > 0.01:
            break
    expected = 100 * mean_cos(images)
    assert expected > 1
    _samples(tmp_path / "s", images, prompts)
    assert evaluate_t2i.run(["--samples", str(tmp_path / "s"), "--clip", str(clip)]) == 0
    got = json.loads((tmp_path / "s" / "metrics_t2i.json").read_text())["clip_score"]
    assert got == pytest.approx(expected, abs=1e-3)


def test_fid_against_a_reference_folder(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    _samples(tmp_path / "s", images, ["a", "b", "c"])
    weights = random_inception_weights(tmp_path / "inception.pth")
    same, other = tmp_path / "same", tmp_path / "other" / "nested"
    same.mkdir(), other.mkdir(parents=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(same / f"{i}.png")  # the samples themselves: FID ~ 0
    for i in range(3):  # larger, non-square references are resized and cropped to 32 px
        Image.fromarray(rng.integers(0, 60, (40, 64, 3), dtype=np.uint8)).save(other / f"{i}.jpg")
    fids = []
    for ref in (same, other.parent):
        evaluate_t2i.run(
            [
                "--samples",
                str(tmp_path / "s"),
                "--reference",
                str(ref),
                "--inception-weights",
                str(weights),
                "--batch-size",
                "3",
            ]
        )
        fids.append(json.loads((tmp_path / "s" / "metrics_t2i.json").read_text())["fid"])
    assert abs(fids[0]) < 1e-3 and fids[1] > 1.0
    with pytest.raises(InputError, match="both --reference and --inception-weights"):
        evaluate_t2i.run(["--samples", str(tmp_path / "s"), "--reference", str(same)])


def test_make_evaluate_t2i(tmp_path):
    """`make evaluate-t2i` gives the command's CLIP score; missing variables are one-line errors."""
    clip = _tiny_clip(tmp_path / "clip")
    images = np.random.default_rng(3).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    _samples(tmp_path / "s", images, ["a red cat", "the moon"])
    assert evaluate_t2i.run(["--samples", str(tmp_path / "s"), "--clip", str(clip)]) == 0
    direct = json.loads((tmp_path / "s" / "metrics_t2i.json").read_text())["clip_score"]
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "HF_HUB_OFFLINE": "1"}
    make = ["make", "--no-print-directory", "evaluate-t2i", f"PY={sys.executable}"]
    done = subprocess.run(
        [*make, f"SAMPLES={tmp_path / 's'}", f"CLIP={clip}", f"OUT={tmp_path / 'm.json'}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "m.json").read_text())["clip_score"] == pytest.approx(direct, abs=1e-6)
    for given, message in (
        ([], "evaluate-t2i: SAMPLES is not set ("),
        ([f"SAMPLES={tmp_path}"], "evaluate-t2i: set REFERENCE=dir with INCEPTION=weights.pth"),
        ([f"SAMPLES={tmp_path}", f"REFERENCE={tmp_path}"], "evaluate-t2i: INCEPTION is not set ("),
    ):
        done = subprocess.run([*make, *given], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and done.stderr.startswith(message), done.stderr
