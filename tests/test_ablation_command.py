"""`vfmvae ablation` end to end on tiny exports of every row (docs/analyses.md, "Component ablation"): records
and exports evaluated here become one table next to the paper's numbers, with a stand-in feature extractor
for Inception; bad input is a one-line error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_modules.commands import ablation as command
from vfmvae.tokenizer import VFMVAE
from vfmvae.tokenizer.ablation import ABLATION_ROWS, ablation_config
from vfmvae.tokenizer.config import get_config


def tiny_features(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Stand-in for Inception: the mean colour (3-d, fewer dimensions than images) as pool and logits."""
    x = images.float().mean(dim=(2, 3)) / 255
    return {"pool": x, "logits": x * 3}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablation")
    torch.manual_seed(0)
    vfm = VFMVAE(get_config("debug")).vfm
    folders = {}
    for row in ("baseline", "full"):
        model = VFMVAE(ablation_config(row, get_config("debug")), vfm=vfm).eval()
        model.save_pretrained(root / row)
        folders[row] = root / row
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (80, 72, 3), dtype=np.uint8)).save(images / f"im_{i}.png")
    return root, folders, images


def _record(path, kind, results):
    path.write_text(json.dumps({"kind": kind, "results": results, "protocol": {"follows": "test"}}))
    return path


def test_help_runs():
    with pytest.raises(SystemExit) as exit_info:
        command.main(["--help"])
    assert exit_info.value.code == 0


def test_table_from_exports_and_records(exports, capsys):
    root, folders, images = exports
    recon = _record(root / "fusion_recon.json", "reconstruction", {"rfid": 1.5, "psnr": 20.0, "ssim": 0.5})
    adm = _record(root / "fusion_adm.json", "adm", {"fid": 7.25, "sfid": 5.0})
    paper = root / "paper.yaml"
    paper.write_text("rows:\n  full: {rfid: 0.9, gfid: 4.5}\n")
    argv = [
        *("--tokenizer", f"baseline={folders['baseline']}", "--tokenizer", f"full={folders['full']}"),
        *("--record", f"fusion={recon}", "--record", f"fusion={adm}"),
        *("--images", str(images), "--resolution", "64", "--batch-size", "4", "--device", "cpu"),
        *("--paper", str(paper), "--base", "debug", "--out", str(root / "table.json")),
    ]
    rows = command.run(argv, inception=tiny_features)
    out = capsys.readouterr().out
    assert [r["row"] for r in rows] == list(ABLATION_ROWS)
    by_row = {r["row"]: r for r in rows}
    assert by_row["fusion"]["ours"] == {"rfid": 1.5, "psnr": 20.0, "ssim": 0.5, "lpips": None, "gfid": 7.25}
    assert by_row["blocks"]["ours"] == dict.fromkeys(("rfid", "psnr", "ssim", "lpips", "gfid"))
    assert by_row["full"]["paper"]["rfid"] == 0.9 and by_row["full"]["paper"]["gfid"] == 4.5
    assert by_row["baseline"]["paper"]["rfid"] is None
    # The exports' PSNR, recomputed by hand: resize_center crop (72x80 -> 64), sampled latent with the seed,
    # uint8 by truncation, PSNR per image on uint8 then the mean.
    model = VFMVAE.from_pretrained(folders["full"]).float().eval()
    real = []
    for p in sorted(images.glob("*.png")):
        im = Image.open(p).convert("RGB")
        w, h = im.size
        im = im.resize((64, round(64 * h / w)), Image.BILINEAR)
        top = int(round((im.size[1] - 64) / 2.0))
        real.append(np.asarray(im)[top : top + 64])
    real = torch.from_numpy(np.stack(real)).permute(0, 3, 1, 2)
    gen = torch.Generator().manual_seed(0)
    psnrs = []
    with torch.no_grad():
        for start in range(0, len(real), 4):
            r = real[start : start + 4]
            z = model.encode(r.float() / 255).sample(generator=gen)
            fake = ((model.decode(z).clamp(-1, 1) + 1) / 2 * 255).to(torch.uint8)
            mse = (r.double() - fake.double()).square().mean(dim=(1, 2, 3))
            psnrs += (10 * torch.log10(255.0**2 / mse)).tolist()
    assert by_row["full"]["ours"]["psnr"] == pytest.approx(float(np.mean(psnrs)), abs=0.05)
    assert by_row["full"]["ours"]["rfid"] is not None and by_row["full"]["ours"]["rfid"] >= 0
    assert by_row["baseline"]["ours"]["psnr"] != by_row["full"]["ours"]["psnr"]
    # Parameter columns: the decoder grows with the blocks, the head with the VFM layers.
    assert by_row["blocks"]["params"]["decoder"] > by_row["fusion"]["params"]["decoder"]
    assert by_row["full"]["params"]["head"] > by_row["blocks"]["params"]["head"]
    assert "| + multi-scale latent fusion |" in out and "7.250" in out and "n/a" in out
    saved = json.loads((root / "table.json").read_text())
    assert saved["rows"] == rows and saved["base"] == "debug"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--record", "nope=x.json"], "unknown row 'nope'"),
        (["--record", "baseline"], "write ROW=PATH"),
        (["--record", "baseline=missing.json"], "evaluation record not found"),
        (["--tokenizer", "full=somewhere"], "--images DIR"),
    ],
)
def test_bad_input_is_one_line_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        command.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_a_file_that_is_not_a_record_is_refused(tmp_path, capsys):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"rows": []}))
    with pytest.raises(SystemExit) as exit_info:
        command.main(["--record", f"full={path}"])
    assert exit_info.value.code == 2
    assert "is not an evaluation record" in capsys.readouterr().err


def _make(repo_root, *args):
    import subprocess

    return subprocess.run(["make", "-s", "-C", str(repo_root), *args], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    "args, message",
    [(("ablation",), "RECORDS"), (("train-ablation",), "ROW"), (("train-ablation", "ROW=fusion"), "DATA_ROOT")],
)
def test_make_names_what_is_missing(repo_root, args, message):
    proc = _make(repo_root, *args)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def test_make_ablation_prints_the_table(repo_root, tmp_path):
    recon = _record(tmp_path / "r.json", "reconstruction", {"rfid": 2.5, "psnr": 19.5, "ssim": 0.4, "lpips": 0.3})
    out = f"OUT={tmp_path / 't.json'}"
    proc = _make(repo_root, "ablation", f"RECORDS=baseline={recon}", out, "ABLATION_ARGS=--base debug")
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("| baseline decoder |"))
    assert "| 2.500 | n/a | 19.500 | n/a | 0.400 | n/a | 0.300 | n/a | n/a | n/a |" in line
    assert json.loads((tmp_path / "t.json").read_text())["rows"][0]["ours"]["lpips"] == 0.3
