"""The text-to-image demo phase's configuration (its end-to-end run is part of the slow CI-size demo test,
`tests/test_demo.py`) and the `cache-captions` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from lightning_modules.commands import demo as demo_mod
from vfmvae.demo import NUM_CLASSES, load_size, run_configs


def _stacked(files):
    def merge(a, b):
        if isinstance(a, dict) and isinstance(b, dict):
            return {k: merge(a.get(k), v) if k in a else v for k, v in {**a, **b}.items()}
        return b

    out: dict = {}
    for f in files:
        out = merge(out, yaml.safe_load(f.read_text()))
    return out


@pytest.mark.parametrize("size", ["demo", "ci", "debug"])
def test_t2i_phase_numbers_agree(size):
    assert demo_mod.PHASES[-2:] == ("t2i", "summary")
    s = load_size(demo_mod.CONFIGS, size)
    cfg = _stacked(run_configs(demo_mod.CONFIGS, size, "t2i"))
    t, model, data = cfg["trainer"], cfg["model"]["init_args"], cfg["data"]["init_args"]
    callbacks = {c["class_path"].rsplit(".", 1)[-1]: c.get("init_args", {}) for c in t["callbacks"]}
    assert callbacks["AtomicModelCheckpoint"]["every_n_train_steps"] == t["max_steps"]  # last.ckpt at the end
    assert model["global_batch_size"] == data["batch_size"] <= s.train_per_class * NUM_CLASSES
    assert model["network"] == "text_dit" and model["network_overrides"]["input_size"] == s.resolution // 16


def test_cache_captions_command(tmp_path):
    from datamodules.captions_cache import CaptionLatentDataset
    from datamodules.captions_demo import DemoCaptionDataModule
    from lightning_modules.commands.cache_captions import run

    dm = DemoCaptionDataModule(root=str(tmp_path / "demo"), num_per_class=1, batch_size=5)
    dm.prepare_data()
    cache = tmp_path / "demo" / "latents"
    keys = [dm_item["key"] for dm_item in CaptionLatentDataset(cache)]
    data = tmp_path / "pairs"
    (data / "g").mkdir(parents=True)
    for key in keys:  # the caption folder's keys are the cache's (file stems)
        (data / "g" / f"{key}.png").write_bytes(
            (tmp_path / "demo" / "images").rglob(f"{key}.png").__next__().read_bytes()
        )
    lines = [json.dumps({"key": k, "caption": f"photo &amp; {i}" if i else ""}) for i, k in enumerate(keys)]
    (data / "captions.jsonl").write_text("\n".join(lines) + "\n")
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "HF_HUB_OFFLINE": "1"}
    make = ["make", "--no-print-directory", "cache-captions", f"PY={sys.executable}"]
    done = subprocess.run(
        [*make, f"CACHE={cache}", f"DATA_ROOT={data}", "TEXT_FEATURES=1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ds = CaptionLatentDataset(cache, use_text_features=True)
    assert len(ds) == len(keys) - 1 and ds[0]["caption"] == "photo & 1" and ds[0]["text_features"].shape == (16, 32)
    assert json.loads((cache / "captions_manifest.json").read_text())["skipped"] == [keys[0]]
    # The command itself (no make) and the target's one-line errors for missing variables.
    assert run(["--cache", str(cache), "--data-root", str(data), "--empty-caption", "null"]) == 0
    assert len(CaptionLatentDataset(cache)) == len(keys)
    for given, missing in (([], "CACHE"), ([f"CACHE={cache}"], "DATA_ROOT")):
        done = subprocess.run([*make, *given], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and done.stderr.startswith(f"cache-captions: {missing} is not set ("), done.stderr
