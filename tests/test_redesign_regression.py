"""The redesign changes no behaviour: tiny runs of the old code, re-run on this code, must agree bitwise.

References (losses as `float.hex`, a digest of every trainable and EMA tensor, old checkpoints and an old
tokenizer export) were written by `tests/fixtures/pre_redesign/record.py` at the commit named in its
docstring and in `reference.json`. The runs go through the user's entry point (`lightning_modules.cli.main`
with the shipped demo YAMLs and command-line overrides); `record.py` holds their definitions, so a
redesign that renames a YAML key or moves the EMA edits `cli_args` / `ema_tensors` there, never the
recorded numbers.

Bitwise results depend on the CPU kernels (vendor, instruction set, torch build): the old code itself gives
last-bit differences on another machine kind. References are therefore kept per machine kind
(`tests/fixtures/pre_redesign/machine.py`): `reference.json` from the machine of the original recording, and
`machines/<fingerprint>.json` recorded by the *old* code on further machine kinds (resuming the shipped
checkpoints, decoding the shipped export). On a recorded machine kind every check is bitwise. On any other,
only what involves no optimiser step can agree: the losses of a run's first step (and of the first step after a
resume) to a relative 1e-5 and the shipped export's outputs to 1e-5; later steps are checked for the same
finite terms only, because the tokenizer's Adam with beta1 = 0 turns last-bit gradient differences into
lr-sized weight differences (measured between two x86-64 machine kinds: 1e-7 at step 1, up to 10 % at step
3). fp32, one intra-op thread (set below and in `record.py`), single-process data loading (`num_workers: 0`).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pre_redesign"


def _load_record():
    name = "pre_redesign_record"  # the name the runs' command lines use for the loss recorder
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, FIXTURES / "record.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _load_machine():
    spec = importlib.util.spec_from_file_location("pre_redesign_machine", FIXTURES / "machine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


record = _load_record()
MACHINE_FILE = FIXTURES / "machines" / f"{_load_machine().machine_fingerprint()}.json"
ORIGINAL = json.loads(record.REFERENCE.read_text())
# Bitwise references of this machine kind where they were recorded; else the original, compared with tolerances.
EXACT = MACHINE_FILE.is_file()
REFERENCE = json.loads(MACHINE_FILE.read_text()) if EXACT else ORIGINAL
LOSS_RTOL = 1e-5  # on an unrecorded machine kind, for steps before which no optimiser step ran here
TENSOR_ATOL = 1e-5


@pytest.fixture(autouse=True)
def _deterministic(monkeypatch, repo_root):
    monkeypatch.chdir(repo_root)  # the YAML paths are relative to the repository
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _diagnosis() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(record.DIAGNOSIS))


def assert_losses_equal(run: str, got: dict[int, dict[str, float]], steps, expected: dict | None = None) -> None:
    """Every recorded loss term at every step in ``steps``, exactly; names the first that differs.

    On an unrecorded machine kind: the first step in ``steps`` to ``LOSS_RTOL``, the others finite only.
    """
    expected = expected or REFERENCE["runs"][run]["losses"]
    steps = list(steps)
    for step in steps:
        assert step in got, f"{run}: no losses logged at step {step} (logged steps: {sorted(got)})"
        want = expected[str(step)]
        assert sorted(got[step]) == sorted(want), (
            f"{run} step {step}: logged loss terms {sorted(got[step])} != recorded {sorted(want)}"
        )
        for term, hex_value in want.items():
            value = got[step][term]
            if not EXACT and step != steps[0]:
                assert math.isfinite(value), f"{run} step {step}: {term} = {value!r}"
                continue
            if not EXACT:
                assert value == pytest.approx(float.fromhex(hex_value), rel=LOSS_RTOL, abs=1e-7), (
                    f"{run} step {step}: {term} = {value!r} != recorded {float.fromhex(hex_value)!r} "
                    f"(tolerance: no bitwise references for this machine kind, {MACHINE_FILE.name})"
                )
                continue
            assert value.hex() == hex_value, (
                f"{run} step {step}: {term} = {value!r} ({value.hex()}) != recorded "
                f"{float.fromhex(hex_value)!r} ({hex_value})"
            )


def assert_tensors_equal(
    prefix: str, got: dict[str, torch.Tensor], expected: dict[str, str], diagnose: bool = True
) -> None:
    """Bitwise equality by digest; names the first tensor that differs (with its max |diff| when kept whole)."""
    missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    assert not missing and not unexpected, f"{prefix}: tensors missing {missing[:10]}, unexpected {unexpected[:10]}"
    if not EXACT:  # digests need bitwise equality: dtype and shape here; values only where no step ran
        for name in expected:
            assert record.digest(got[name]).split(" ")[:-1] == expected[name].split(" ")[:-1], name
            assert torch.isfinite(got[name]).all(), f"{prefix}: {name} is not finite"
        return
    for name, want in expected.items():
        digest = record.digest(got[name])
        if digest != want:
            detail = ""
            whole = _diagnosis().get(f"{prefix}/{name}" if prefix else name) if diagnose else None
            if whole is not None and whole.shape == got[name].shape:
                detail = f"; max |diff| = {(got[name].double() - whole.double()).abs().max().item():.3e}"
            raise AssertionError(f"{prefix}: {name} differs from the recorded tensor: {digest} != {want}{detail}")


@pytest.mark.slow
@pytest.mark.parametrize("run", record.RUNS)
def test_run_is_bitwise_identical_to_the_pre_redesign_code(run, tmp_path):
    result = record.run(run, tmp_path)
    assert result["global_step"] == record.STEPS
    assert_losses_equal(run, result["losses"], range(1, record.STEPS + 1))
    assert_tensors_equal(run, result["tensors"], REFERENCE["runs"][run]["tensors"])
    if run == "tokenizer":  # the export this code writes equals the old one where it matters: its outputs
        # (on the original machine the uninterrupted run wrote the shipped export, so `run_export` is `export`)
        assert_tensors_equal(
            "", record.export_outputs(tmp_path / "export"), REFERENCE.get("run_export", REFERENCE["export"])
        )


@pytest.mark.slow
@pytest.mark.parametrize("run", record.RUNS)
def test_pre_redesign_checkpoint_resumes_to_the_uninterrupted_run(run, tmp_path):
    ckpt = record.checkpoint_path(run)
    assert ckpt.is_file(), f"missing fixture {ckpt} (git checkout tests/fixtures/pre_redesign)"
    result = record.run(run, tmp_path, ckpt_path=ckpt)
    assert result["global_step"] == record.STEPS
    steps = range(record.RESUME_STEP + 1, record.STEPS + 1)
    assert sorted(result["losses"]) == list(steps)
    # What the recorded code reached from this checkpoint (on the original machine: the uninterrupted run where
    # it resumed exactly; per-machine files always store the resumed run, since the shipped checkpoint comes
    # from the original machine's run).
    entry = REFERENCE["runs"][run]
    ref = entry["resumed"] if "resumed" in entry else entry
    assert_losses_equal(run, result["losses"], steps, ref["losses"])
    assert_tensors_equal(run, result["tensors"], ref["tensors"], diagnose=run in record.RESUME_EQUALS_UNINTERRUPTED)


def test_pre_redesign_export_loads_and_decodes_exactly():
    outputs = record.export_outputs(record.EXPORT)
    assert_tensors_equal("", outputs, REFERENCE["export"])
    if not EXACT:  # no optimiser step involved: the old export decodes to within float rounding on any machine
        whole = _diagnosis()
        for name, value in outputs.items():
            torch.testing.assert_close(value, whole[name], rtol=0, atol=TENSOR_ATOL)


def test_the_references_are_not_trivial():
    # The runs trained (losses change between steps, EMA differs from the weights) and every term is finite.
    for run in record.RUNS:
        if "resumed" not in ORIGINAL["runs"][run]:
            assert run in record.RESUME_EQUALS_UNINTERRUPTED, run
        losses = REFERENCE["runs"][run]["losses"]
        assert sorted(losses, key=int) == [str(s) for s in range(1, record.STEPS + 1)]
        first, last = losses["1"], losses[str(record.STEPS)]
        assert any(first[k] != last[k] for k in first), run
        values = [float.fromhex(v) for terms in losses.values() for v in terms.values()]
        assert all(v == v and abs(v) != float("inf") for v in values), run
        tensors = REFERENCE["runs"][run]["tensors"]
        ema = [n for n in tensors if n.startswith("ema/")]
        assert ema and any(tensors[n] != tensors.get("param/" + n[len("ema/") :]) for n in ema), run
    names = set(REFERENCE["runs"]["tokenizer"]["losses"]["1"])
    # The stage-0 terms (equivariance has no term of its own: it transforms inputs, latents and targets).
    for term in ("loss/G/l1", "loss/G/kl", "loss/G/vf", "loss/G/g_hinge", "loss/D/d_hinge"):
        assert term in names, (term, sorted(names))
    assert {"loss/proj", "loss/cls_mse"} <= set(REFERENCE["runs"]["reg"]["losses"]["1"])
