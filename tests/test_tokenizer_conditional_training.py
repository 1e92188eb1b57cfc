"""Training a conditional tokenizer decoder through the CLI (`configs/tokenizer/demo_text_conditional.yaml`).

The demo-size config runs on the embedded photographs with a tiny override (batch 2, 64 px, 2-3 steps; the
text run as stage 1): the data
module writes the captions and a word-level tokenizer (built offline with `tokenizers`), the module tokenises
the captions, the frozen text tower encodes them, and the decoder's cross-attention and text-conditioned
mapping learn from them. Also: the data module's class names and captions, and the paper-size config parses.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import build_cli, print_config

from datamodules.text_conditions import ConditionalImageDataModule, load_captions, load_class_names

BATCH = 2
DEMO = "configs/tokenizer/demo_text_conditional.yaml"


def _override(tmp: Path, tokenizer: str, condition: str, stage: int, steps: int) -> Path:
    data = tmp / "data"
    override = {
        "trainer": {
            "max_steps": steps,
            "limit_val_batches": 1,
            "num_sanity_val_steps": 0,
            "val_check_interval": steps,
            "logger": False,
            "enable_progress_bar": False,
            "enable_checkpointing": False,
            "callbacks": [],
            "default_root_dir": str(tmp),
            "log_every_n_steps": 1,
        },
        "model": {
            "init_args": {
                "stage": stage,
                "tokenizer": tokenizer,
                "text_tokenizer": str(data / "tok"),
                "global_batch_size": BATCH,
                "export_dir": None,
                "cpu_threads": None,
            }
        },
        "data": {
            "init_args": {
                "condition": condition,
                "class_names_path": str(data / "class_names.txt"),
                "demo_tokenizer_dir": str(data / "tok"),
                "config": {
                    "root": str(data),
                    "batch_size": BATCH,
                    "val_batch_size": BATCH,
                    "num_workers": 0,
                    "min_seen_for_bad_check": 10,
                    "demo": {"resolution": 64, "num_per_class": 1},
                },
            }
        },
    }
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(override))
    return path


def _fit(repo_root: Path, tmp: Path, tokenizer: str, condition: str, stage: int = 0, steps: int = 2):
    cli = build_cli(repo_root / DEMO, _override(tmp, tokenizer, condition, stage, steps))
    module = cli.model
    before = {k: v.detach().clone() for k, v in module.tokenizer.state_dict().items()}
    losses = []
    original = module.objective.generator_phase

    def generator_phase(*args, **kwargs):
        out = original(*args, **kwargs)
        losses.append(float(out.total.detach()))
        assert kwargs.get("condition"), "the G phase got no condition"
        return out

    module.objective.generator_phase = generator_phase
    cli.trainer.fit(module, datamodule=cli.datamodule)
    return module, before, losses


def test_text_conditional_stage_runs_and_learns_from_captions(repo_root, tmp_path):
    module, before, losses = _fit(repo_root, tmp_path, "debug-text", "captions", stage=1, steps=3)
    assert module.stage == 1 and len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    after = module.tokenizer.state_dict()
    # The caption path trains: cross-attention output projections start at zero and move.
    moved = [k for k in after if ".cross_attention." in k and "to_out" in k and not torch.equal(after[k], before[k])]
    assert moved, "no cross-attention output projection changed"
    frozen = [k for k in after if k.startswith("text_encoder.")]
    assert frozen and all(torch.equal(after[k], before[k]) for k in frozen)  # the text tower is frozen
    tok = json.loads((tmp_path / "data" / "tok" / "tokenizer.json").read_text())
    assert "astronaut" in tok["model"]["vocab"]  # built offline from the demo captions
    # Checkpoints leave the frozen text tower out (with its hash) and fill it back in on load.
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert not any(k.startswith("tokenizer.text_encoder.") for k in checkpoint["state_dict"])
    assert checkpoint["tokenizer_training"]["frozen"]["text"]["num_tensors"] == len(frozen)
    module.on_load_checkpoint(checkpoint)
    assert all(torch.equal(checkpoint["state_dict"][f"tokenizer.{k}"], after[k]) for k in frozen)


def test_class_id_conditional_stage_runs_and_trains_the_class_embedding(repo_root, tmp_path):
    # cls2text shares the text path above; its class names are checked in the data-module test below.
    module, before, losses = _fit(repo_root, tmp_path, "debug-cls2id", "class_ids")
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    after = module.tokenizer.state_dict()
    assert not torch.equal(after["decoder.mapping.embed.weight"], before["decoder.mapping.embed.weight"])


def test_data_module_yields_names_and_captions(tmp_path):
    from datamodules.imagenet import data_preset

    cfg = data_preset("debug", root=str(tmp_path / "d"), resolution=32)
    dm = ConditionalImageDataModule(cfg, "class_names", str(tmp_path / "names.txt"), demo_tokenizer_dir=None)
    dm.prepare_data()
    names = load_class_names(tmp_path / "names.txt")
    assert names[0] == "astronaut" and "grace hopper" in names
    dm.setup("fit")
    batch = dm.on_before_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert batch["class_name"] == [names[int(i)] for i in batch["label"]]
    captions = load_captions(tmp_path / "d" / "train" / "captions.jsonl")
    cap = ConditionalImageDataModule(cfg, "captions")
    cap.setup("fit")
    batch = cap.on_before_batch_transfer(next(iter(cap.train_dataloader())), 0)
    assert batch["caption"] == [captions[k] for k in batch["key"]]
    assert all(c == f"a photo of a {names[int(i)]}" for c, i in zip(batch["caption"], batch["label"]))


def test_data_module_errors_name_the_problem(tmp_path):
    from datamodules.imagenet import data_preset

    cfg = data_preset("debug", root=str(tmp_path / "d"), resolution=32)
    ConditionalImageDataModule(cfg, "captions").prepare_data()
    captions = tmp_path / "d" / "train" / "captions.jsonl"
    lines = captions.read_text().splitlines()
    captions.write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(ValueError, match="no caption for 1 image"):
        ConditionalImageDataModule(cfg, "captions").setup("fit")
    captions.write_text("\n".join(lines + lines[:1]) + "\n")
    with pytest.raises(ValueError, match="a second caption"):
        ConditionalImageDataModule(cfg, "captions").setup("fit")
    (tmp_path / "few.txt").write_text("one\ntwo\n")
    with pytest.raises(ValueError, match="names 2 classes"):
        ConditionalImageDataModule(cfg, "class_names", str(tmp_path / "few.txt")).setup("fit")
    with pytest.raises(ValueError, match="needs class_names_path"):
        ConditionalImageDataModule(cfg, "class_names")
    with pytest.raises(ValueError, match="unknown condition"):
        ConditionalImageDataModule(cfg, "prompts")


def test_paper_size_config_parses_with_the_gpu_trainer(repo_root, capsys):
    configs = repo_root / "configs"
    printed = print_config(
        capsys, configs / "tokenizer" / "stage1_text_conditional.yaml", configs / "trainer" / "ddp_bf16.yaml"
    )
    assert printed["trainer"]["precision"] == "bf16-mixed"
    assert printed["model"]["init_args"]["tokenizer"] == "vfmvae-f16d32-siglip2-text"
    assert printed["data"]["init_args"]["condition"] == "captions"


def test_one_captions_format_for_the_tokenizer_and_text_to_image(tmp_path):
    """A ``{"key", "caption"}`` captions.jsonl (the text-to-image format) conditions the tokenizer too, with the
    same cleaning, and both readers give the same captions."""
    from datamodules.captions import CaptionFolderSource
    from datamodules.imagenet import data_preset

    cfg = data_preset("debug", root=str(tmp_path / "d"), resolution=32)
    ConditionalImageDataModule(cfg, "captions").prepare_data()
    split = tmp_path / "d" / "train"
    rows = [json.loads(x) for x in (split / "captions.jsonl").read_text().splitlines()]
    assert all(set(r) == {"key", "caption"} for r in rows)  # the demo writes the one format
    keyed = [{"key": r["key"], "text": f"  {r['caption']} &amp; <b>more</b>"} for r in rows]
    (split / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in keyed))
    dm = ConditionalImageDataModule(cfg, "captions")
    dm.setup("fit")
    expected = {r["key"]: f"{r['caption']} & more" for r in rows}
    assert dm.captions["train"] == expected
    assert CaptionFolderSource(split).captions() == expected
    batch = dm.on_before_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert batch["caption"] == [expected[k] for k in batch["key"]]
