"""`vfmvae table1` (paper Table 1): the table read from metric records, and the whole pipeline end to end on tiny
inputs for a tiny random VA-VAE (export, cache, linear probe, LightningDiT fit + sampling through the same commands
as on VFM-VAE latents, SE-CKNNA), with the demo's random conv net standing in for Inception."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

from vfmvae.analyses import PAPER_TABLE1, format_table1, frechet_distance_of, read_table1_row
from vfmvae.metrics.record import evaluation_record, write_record


def _records(tmp_path):
    common = dict(protocol={"follows": "test"}, inputs={}, weights={}, seconds=0.0)
    write_record(evaluation_record("reconstruction", {"rfid": 0.61, "psnr": 20.0}, **common), tmp_path / "rec.json")
    write_record(evaluation_record("adm", {"fid": 4.25}, **common), tmp_path / "gen.json")
    write_record(evaluation_record("linear_probe", {"top1": 40.5}, **common), tmp_path / "probe.json")
    with open(tmp_path / "se.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["model", "feature", "condition", "cknna"])
        w.writeheader()
        for model, clean, mean in (("tokenizer:a", 0.3, 0.25), ("vfm:b", 0.9, 0.8)):
            for cond, v in (("clean", clean), ("noise_0.100", 0.0), ("mean_over_conditions", mean)):
                w.writerow({"model": model, "feature": "pooled", "condition": cond, "cknna": v})
    return {"reconstruction": "rec.json", "generation": "gen.json", "linear_probe": "probe.json",
            "se_cknna": "se.csv", "se_cknna_model": "tokenizer:a"}  # fmt: skip


def test_table_reads_each_column_from_its_record(tmp_path):
    row = read_table1_row(_records(tmp_path), base=tmp_path)
    assert row == {"rfid": 0.61, "gfid": 4.25, "linear_probe": 40.5, "cknna": 0.3, "se_cknna": 0.25}
    assert read_table1_row({"linear_probe": "probe.json"}, base=tmp_path)["gfid"] is None
    table = format_table1([{"name": "X", "measured": row, "paper": PAPER_TABLE1["VA-VAE"], "gfid_epoch": 64}])
    lines = table.splitlines()
    assert lines[2] == "| X | ours | 0.61 | 4.25 (64 ep) | 40.5 | 0.300 | 0.250 |"
    assert lines[3] == "| X | paper | - | 5.14 (64 ep) | 31.9 | 0.202 | 0.135 |"


def test_table_errors_name_the_problem(tmp_path):
    records = _records(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.json does not exist"):
        read_table1_row({"generation": "missing.json"}, base=tmp_path)
    with pytest.raises(ValueError, match="is a 'adm' record, expected 'linear_probe'"):
        read_table1_row({"linear_probe": records["generation"]}, base=tmp_path)
    with pytest.raises(ValueError, match="name one as se_cknna_model"):
        read_table1_row({"se_cknna": "se.csv"}, base=tmp_path)
    with pytest.raises(KeyError, match="unknown record keys"):
        read_table1_row({"samples": "x"}, base=tmp_path)


def test_frechet_distance_of_uses_the_injected_features():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    mean_colour = lambda x: x.reshape(len(x), -1, 3).mean(1).astype(np.float64)  # noqa: E731
    assert frechet_distance_of(mean_colour, a, a) == pytest.approx(0.0, abs=1e-6)
    b = np.clip(a.astype(int) + 10, 0, 255).astype(np.uint8)
    fa, fb = mean_colour(a), mean_colour(b)
    # Same covariance (a shift): the distance is the squared distance of the means.
    assert frechet_distance_of(mean_colour, a, b) == pytest.approx(((fa.mean(0) - fb.mean(0)) ** 2).sum(), rel=0.05)


def test_table1_command_config_errors(tmp_path, capsys):
    from lightning_modules.commands.table1 import build_parser, main, run
    from vfmvae.commands._errors import InputError

    assert "--config" in build_parser().format_help()
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"tokenizers": [{"name": "X", "recods": {}}]}))
    with pytest.raises(SystemExit) as info:
        main(["--config", str(bad)])
    assert info.value.code == 2
    assert "vfmvae table1: error: " in capsys.readouterr().err
    with pytest.raises(InputError, match=r"tokenizers\[0\]: unknown keys \['recods'\]"):
        run(["--config", str(bad)])


@pytest.mark.slow
def test_table1_pipeline_end_to_end_on_a_tiny_vavae(tmp_path, monkeypatch, capsys):
    """Every column for a tiny random VA-VAE: its latents are cached, probed, trained on by LightningDiT (the sample
    grids decoded by the VA-VAE export) and sampled by `vfmvae sample`, exactly the VFM-VAE path."""
    from lightning_modules.commands.table1 import run

    monkeypatch.chdir(tmp_path)
    config = {
        "pipeline": {
            "data_root": "data", "demo_data": {"train_per_class": 2, "val_per_class": 1, "resolution": 64},
            "out": "out",
            "options": {"probe_args": ["--protocol", "demo", "--global-batch-size", "10", "--epochs", "3", "--warmup-epochs", "1"],
                        "diffusion_steps": 3, "num_samples": 8, "sample_steps": 3,
                        "se_cknna_images": 12, "se_cknna_resolution": 128},
        },
        "tokenizers": [{"name": "VA-VAE", "tokenizer": "none", "tokenizer_preset": "debug-vavae"}],
    }  # fmt: skip
    (tmp_path / "t1.yaml").write_text(yaml.safe_dump(config))
    assert len(run(["--config", "t1.yaml", "--out", "table.md"])) == 1
    rows = json.loads((tmp_path / "table.json").read_text())["rows"]
    measured = rows[0]["measured"]
    assert all(measured[c] is not None for c in ("rfid", "gfid", "linear_probe", "cknna", "se_cknna")), measured
    assert rows[0]["gfid_epoch"] == pytest.approx(3 * 16 / 30, abs=0.01)  # steps x batch / cached images
    out = tmp_path / "out" / "va_vae"
    manifest = json.loads((out / "probe" / "latents" / "train" / "manifest.json").read_text())
    tokenizer_record = json.loads((out / "tokenizer" / "config.json").read_text())
    assert manifest["tokenizer"]["kind"] == "vavae"
    assert manifest["tokenizer"]["weights_sha256"] == tokenizer_record["weights_sha256"]
    ckpt = next((out / "diffusion").rglob("last.ckpt"))
    import torch

    provenance = torch.load(ckpt, map_location="cpu", weights_only=False)["diffusion"]["provenance"]
    assert provenance["tokenizer"]["weights_sha256"] == tokenizer_record["weights_sha256"]
    samples = next((out / "samples").glob("samples_8x64x64x3.npz"))
    sample_prov = json.loads(str(np.load(samples)["provenance"]))
    assert sample_prov["tokenizer"]["export_sha256"] == tokenizer_record["weights_sha256"]
    assert "| VA-VAE | paper | - | 5.14 (64 ep) | 31.9 | 0.202 | 0.135 |" in capsys.readouterr().out
