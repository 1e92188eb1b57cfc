"""`vfmvae export-tokenizer`: a released VA-VAE (the official fixture's LDM keys) becomes an export folder that every
command loads by path, with the same weights and hash as the converter gives."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
import yaml
from safetensors.torch import load_file, save_file

from vfmvae.tokenizer import from_official_vavae
from vfmvae.tokenizer.sources import load_any_tokenizer


def test_release_file_to_export_folder(fixtures_dir, tmp_path, capsys):
    from vfmvae.commands.export_tokenizer import run

    tensors = load_file(fixtures_dir / "vavae_tiny.safetensors")
    meta = json.loads((fixtures_dir / "vavae_tiny.json").read_text())
    sd = {k[len("state_dict.") :]: v.contiguous() for k, v in tensors.items() if k.startswith("state_dict.")}
    save_file(sd, str(tmp_path / "release.safetensors"))
    (tmp_path / "vavae.yaml").write_text(yaml.safe_dump({"model": {"params": {"ddconfig": meta["ddconfig"]}}}))
    argv = ["--tokenizer", str(tmp_path / "release.safetensors"), "--tokenizer-preset", "vavae-f16d32",
            "--tokenizer-kwargs", str(tmp_path / "vavae.yaml"), "--out", str(tmp_path / "export")]  # fmt: skip
    assert run(argv)["kind"] == "vavae"
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    direct = from_official_vavae(sd, meta["ddconfig"])
    loaded = load_any_tokenizer(str(tmp_path / "export"))
    assert printed["kind"] == loaded.kind == "vavae"
    assert printed["weights_sha256"] == loaded.weights_sha256() == direct.weights_sha256()
    x = torch.rand(1, 3, meta["ddconfig"]["resolution"], meta["ddconfig"]["resolution"])
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x).mean, direct.encode(x).mean, atol=0, rtol=0)


def test_help(repo_root):
    proc = subprocess.run([sys.executable, "-m", "lightning_modules", "export-tokenizer", "--help"], cwd=repo_root,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0 and "--tokenizer-preset" in proc.stdout, proc.stderr
