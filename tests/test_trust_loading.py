"""No code runs from a file the user gives us: a booby-trapped pickle is fed to EVERY loader.

The trap is a pickle whose ``__reduce__`` creates a marker file when unpickled. Every loader must refuse it
with a one-line error naming the file and ``--trust-pickle``, and the marker must not exist afterwards.
Before this round `vfmvae sample --ckpt`, the official tokenizer reader (`load_official_state_dict`), the
filter key list (`.pkl`), the stage hand-off and the FSDP consolidation unpickled in full: the marker appeared.
A grep test keeps new `torch.load` / `pickle.load` calls out of the code (they go through
`vfmvae.utils.safe_load`).
"""

from __future__ import annotations

import importlib
import os
import pickle
import re
from pathlib import Path

import pytest
import torch

from vfmvae.utils.safe_load import (
    CorruptFileError,
    UnsafePickleError,
    load_plain_pickle,
    load_user_file,
    trusting_pickles,
)


class Trap:
    """Unpickling this calls ``os.system("touch MARKER")``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def trap(tmp_path):
    """``(torch file, plain pickle, marker)``: both files create ``marker`` when fully unpickled."""
    marker = tmp_path / "MARKER"
    pt = tmp_path / "trap.pt"
    torch.save({"G_ema": {"w": torch.zeros(2)}, "ema": {"w": torch.zeros(2)}, "x": Trap(marker)}, pt)
    pkl = tmp_path / "trap.pkl"
    pkl.write_bytes(pickle.dumps(["n01440764_10026", Trap(marker)]))
    return pt, pkl, marker


def _refused(call, marker: Path, path: Path) -> str:
    with pytest.raises(Exception) as info:
        call()
    message = str(info.value)
    assert not marker.exists(), "the booby-trapped file ran code"
    assert "\n" not in message and str(path) in message and "--trust-pickle" in message, message
    return message


def test_the_trap_does_run_code_when_trusted(trap):
    """The trap is real: full unpickling (what the loaders did before) creates the marker."""
    pt, pkl, marker = trap
    with trusting_pickles():
        load_user_file(pt)
    assert marker.exists()
    marker.unlink()
    load_user_file(pkl, trust_pickle=True)
    assert marker.exists()


def _se_cknna_state_dict(path):
    return importlib.import_module("vfmvae.commands.se_cknna")._state_dict(str(path))


def _sampling_network(family):
    from vfmvae.dit.loading import load_sampling_network

    return lambda path: load_sampling_network(path, family)


def _lpips_backbone(path):
    from vfmvae.losses.lpips import LPIPS

    lpips = LPIPS.__new__(LPIPS)  # the loading method alone: building VGG16 first would cost seconds
    return lpips._load_backbone(path, random_backbone=False)


def _dino_vit(path):
    from vfmvae.tokenizer.discriminators.projected import PROJECTED_DISCRIMINATOR_PRESETS, build_dino_vit

    return build_dino_vit(PROJECTED_DISCRIMINATOR_PRESETS["debug"], path)


def _checkpoint_header(path):
    from lightning_modules.run_folders import read_checkpoint_header

    return read_checkpoint_header(path)


def _stage_handoff(path):
    from vfmvae.tokenizer.handoff import read_previous_stage

    return read_previous_stage(str(path), None, {}, "tokenizer", "all")  # the file is refused before anything else


def _import(dotted: str):
    module, name = dotted.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


# Every loader of a user-given torch file (grep `torch.load|pickle.load` before this round, plus the ones that
# were already weights_only, for their one-line errors).
TORCH_FILE_LOADERS = {
    "safe_load.load_user_file": load_user_file,
    "sample.py --ckpt (training checkpoint)": _sampling_network(None),
    "sample.py --ckpt --model lightningdit (official)": _sampling_network("lightningdit"),
    "dit.convert.load_checkpoint_file": lambda p: _import("vfmvae.dit.convert.load_checkpoint_file")(p),
    "dit.unwrap_checkpoint (se_cknna DiT weights)": lambda p: _import("vfmvae.dit.convert.unwrap_checkpoint")(p),
    "tokenizer.convert.load_official_state_dict": lambda p: _import(
        "vfmvae.tokenizer.convert.load_official_state_dict"
    )(p),
    "se_cknna.py tokenizer weights": _se_cknna_state_dict,
    "se_models.latent_stats": lambda p: _import("vfmvae.metrics.se_models.latent_stats")(str(p), torch.zeros(1)),
    "codec.LatentNormalizer.load": lambda p: _import("vfmvae.codec.LatentNormalizer").load(p),
    "vfm.timm_vit.load_state_dict_file": lambda p: _import("vfmvae.vfm.timm_vit.load_state_dict_file")(p),
    "lpips VGG16 weights": _lpips_backbone,
    "lpips heads": lambda p: _import("vfmvae.losses.lpips.LPIPS")(heads_path=p, random_backbone=True),
    "projected discriminator DINO weights": _dino_vit,
    "baselines.weights_io.read_state_dict": lambda p: _import("vfmvae.baselines.weights_io.read_state_dict")(p),
    "CLI resume header (--ckpt_path)": _checkpoint_header,
    "tokenizer stage hand-off (init_ckpt)": _stage_handoff,
}


@pytest.mark.parametrize("name", sorted(TORCH_FILE_LOADERS))
def test_every_torch_file_loader_refuses_the_trap_in_one_line(name, trap):
    pt, _, marker = trap
    message = _refused(lambda: TORCH_FILE_LOADERS[name](pt), marker, pt)
    assert "posix.system" in message


def test_key_list_pkl_is_read_without_running_code(trap, tmp_path):
    from datamodules.key_filter import load_key_list, save_key_list

    _, pkl, marker = trap
    message = _refused(lambda: load_key_list(pkl), marker, pkl)
    assert "filter key list" in message
    # The official format (a pickled list or set of str, any protocol) still loads.
    for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):
        path = tmp_path / f"keys{protocol}.pkl"
        path.write_bytes(pickle.dumps({"a", "b"}, protocol=protocol))
        assert load_key_list(path) == frozenset({"a", "b"})
    assert load_key_list(save_key_list(["k2", "k1"], tmp_path / "ours.pkl")) == frozenset({"k1", "k2"})


def test_sharded_checkpoint_consolidation_needs_trust(tmp_path):
    from vfmvae.utils.fsdp_checkpoint import consolidate_checkpoint

    folder = tmp_path / "step=3.ckpt"
    folder.mkdir()
    (folder / "meta.pt").write_bytes(b"x")
    (folder / ".metadata").write_bytes(b"x")
    with pytest.raises(UnsafePickleError, match="pass --trust-pickle for a folder your own run wrote"):
        consolidate_checkpoint(folder, tmp_path / "out.ckpt")


def test_sample_script_reports_bad_inputs_on_one_line(trap, tmp_path, capsys, fixtures_dir):
    """`vfmvae sample` front end: a trap, a missing checkpoint, a missing tokenizer, garbage statistics."""
    import json

    from safetensors.torch import load_file

    from lightning_modules.commands.sample import main

    pt, _, marker = trap
    tensors = load_file(str(fixtures_dir / "lightningdit_tiny.safetensors"))
    dit = {k[len("state_dict.") :]: v for k, v in tensors.items() if k.startswith("state_dict.")}
    good = tmp_path / "dit.pt"
    torch.save({"ema": dit}, good)
    kwargs = tmp_path / "dit.json"
    kwargs.write_text(
        json.dumps(json.loads((fixtures_dir / "lightningdit_tiny.json").read_text())["constructor_kwargs"])
    )
    garbage = tmp_path / "latents_stats.pt"
    garbage.write_bytes(b"\x13" + os.urandom(511))
    official = ["--ckpt", str(good), "--model", "lightningdit", "--official-kwargs", str(kwargs)]
    rest = ["--out", str(tmp_path / "o"), "--num-images", "1", "--accelerator", "cpu", "--devices", "1"]
    debug_decoder = ["--tokenizer", "none", "--tokenizer-preset", "debug"]
    cases = {
        "trap": ["--ckpt", str(pt), *debug_decoder, *rest],
        "missing checkpoint": ["--ckpt", str(tmp_path / "nope.ckpt"), *debug_decoder, *rest],
        "missing tokenizer": [*official, "--tokenizer", str(tmp_path / "no_tok"), *rest],
        "garbage stats": [*official, *debug_decoder, "--latent-stats", str(garbage), *rest],
    }
    lines = {}
    for name, argv in cases.items():
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        lines[name] = err.strip().splitlines()[-1]
        assert lines[name].startswith("vfmvae sample: error: "), lines[name]
    assert not marker.exists()
    assert "posix.system" in lines["trap"]
    assert (
        lines["missing checkpoint"] == f"vfmvae sample: error: diffusion checkpoint not found: {tmp_path / 'nope.ckpt'}"
    )
    assert str(tmp_path / "no_tok") in lines["missing tokenizer"]
    assert lines["garbage stats"] == (
        f"vfmvae sample: error: latent statistics file {garbage}: not a PyTorch, safetensors or pickle file "
        "(or its start is damaged)"
    )
    assert "weights_only" not in lines["garbage stats"]  # never torch's advice to unpickle in full


def test_truncated_empty_and_foreign_files_are_one_line_corrupt_errors(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(3)}, good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:100])
    empty = tmp_path / "empty.pt"
    empty.touch()
    text = tmp_path / "notes.pkl"
    text.write_text("hello")
    for path, phrase in ((cut, "truncated or corrupt"), (empty, "is empty"), (text, "not a PyTorch")):
        with pytest.raises(CorruptFileError) as info:
            load_user_file(path, what="weights")
        assert str(path) in str(info.value) and phrase in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(CorruptFileError, match="not a readable pickle|truncated or not a pickle"):
        load_plain_pickle(_write(tmp_path / "cut.pkl", pickle.dumps(["a", "b"])[:-3]))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_no_other_unpickling_call_in_the_code(repo_root):
    """New loaders go through vfmvae/utils/safe_load.py (one place to audit)."""
    pattern = re.compile(r"\btorch\.load\(|\bpickle\.loads?\(|allow_pickle\s*=\s*True|weights_only\s*=\s*False")
    allowed = {
        "vfmvae/utils/safe_load.py",
        # Lightning's resume of the run's own FSDP2 checkpoint (README, "What it trusts and what it checks").
        "lightning_modules/parallel.py",
    }
    found = []
    for folder in ("vfmvae", "lightning_modules", "callbacks", "datamodules", "benchmarks"):
        for path in sorted((repo_root / folder).rglob("*.py")):
            rel = path.relative_to(repo_root).as_posix()
            code = "\n".join(line.split("#")[0] for line in path.read_text().splitlines())
            code = re.sub(r'"""[\s\S]*?"""|``[^`]*``|`[^`]*`', "", code)  # docstrings and quoted code
            if rel not in allowed and pattern.search(code):
                found.append(rel)
    assert found == [], found
