"""The one evaluation record: same keys for both kinds, numbers JSON-safe, the followed tool named, atomic write."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from vfmvae.metrics.record import evaluation_record, write_record


def _record(kind="adm", **results):
    return evaluation_record(
        kind,
        results,
        protocol={"follows": "openai/guided-diffusion evaluations/evaluator.py (ADM)"},
        inputs={"samples": "s.npz"},
        weights={"inception": "abc"},
        seconds=1.234,
    )


def test_record_keys_and_json_safe_numbers(tmp_path):
    rec = _record(fid=np.float64(2.5), num=np.int64(7), rfid=math.nan, ris=torch.tensor(3.0), sfid=None)
    assert list(rec) == ["kind", "results", "protocol", "inputs", "weights", "seconds", "environment"]
    assert rec["results"] == {"fid": 2.5, "num": 7, "rfid": None, "ris": 3.0, "sfid": None}
    assert rec["seconds"] == 1.23 and rec["environment"]["torch"] == torch.__version__
    assert list(_record("reconstruction", psnr=20.0)) == list(rec)
    path = write_record(rec, tmp_path / "deep" / "r_adm.json")
    assert json.loads(path.read_text()) == rec  # strict JSON: a NaN would not parse back equal
    assert [p.name for p in path.parent.iterdir()] == ["r_adm.json"]  # no temporary file left behind


def test_record_refuses_unknown_kinds_and_unnamed_protocols():
    with pytest.raises(ValueError, match="kind"):
        _record("fid")
    with pytest.raises(ValueError, match="follows"):
        evaluation_record("adm", {}, protocol={}, inputs={}, weights={}, seconds=0)
