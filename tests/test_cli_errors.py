"""The CLI's one-line config errors come from the config and jsonargparse's exception types, not its text."""

from __future__ import annotations

from argparse import ArgumentError
from typing import Literal

import pytest
import yaml

from lightning_modules.config_errors import (
    error_chain,
    explain_parse_error,
    find_problems,
    origin_error,
    raw_config,
)


class Head:
    def __init__(self, width: int = 8, act: Literal["relu", "gelu"] = "relu", path: str | None = None):
        pass


class Model:
    def __init__(self, lr: float = 1e-4, head: Head | None = None, heads: list | None = None, name: str = "m"):
        pass


class Group:
    def __init__(self, max_steps: int = -1, precision: str | int = 32):
        pass


class Weights:
    def __init__(self, path: str):
        raise FileNotFoundError(f"weights '{path}' not found")


HERE = f"{__name__}"


def test_raw_config_merges_files_then_overrides(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"model": {"class_path": f"{HERE}.Model", "init_args": {"lr": 0.1, "name": "a"}}}))
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"model": {"init_args": {"name": "b"}}, "trainer": {"max_steps": 3}}))
    args = ["fit", "--config", str(base), f"--config={other}", "--model.lr=fast", "--print_config"]
    args += ["--trainer.callbacks+=pkg.A", "--trainer.callbacks+=pkg.B", "--trainer.callbacks.x", "1"]
    cfg = raw_config(args)
    assert cfg["model"] == {"class_path": f"{HERE}.Model", "init_args": {"lr": "fast", "name": "b"}}
    assert cfg["trainer"] == {
        "max_steps": 3,
        "callbacks": [{"class_path": "pkg.A"}, {"class_path": "pkg.B", "init_args": {"x": "1"}}],
    }
    # a different class_path replaces the spec (its old init_args do not apply to the new class)
    new = raw_config(["--config", str(base), "--model.class_path=pkg.Other"])
    assert new["model"] == {"class_path": "pkg.Other"}
    swap = tmp_path / "swap.yaml"
    swap.write_text(yaml.safe_dump({"model": {"class_path": "pkg.Other"}}))
    assert raw_config(["--config", str(base), "--config", str(swap)])["model"] == {"class_path": "pkg.Other"}


def test_problems_name_nested_keys_types_and_close_matches():
    config = {
        "trainer": {"max_stepz": 3, "precision": "bf16-mixed"},
        "model": {
            "class_path": f"{HERE}.Model",
            "init_args": {
                "lr": "fast",
                "head": {"class_path": f"{HERE}.Head", "init_args": {"widht": 4, "act": "tanh"}},
                "heads": [{"class_path": f"{HERE}.Head", "init_args": {"path": None, "width": "8"}}],
            },
        },
    }
    problems = [p.message() for p in find_problems(config, {"trainer": Group})]
    assert problems == [
        "config error: unknown key 'trainer.max_stepz'; did you mean 'max_steps'?",
        "config error: wrong type for 'model.init_args.lr': expected float, got 'fast'",
        f"config error: unknown key 'model.init_args.head.init_args.widht' ({HERE}.Head has no argument 'widht'); "
        "did you mean 'width'?",
        "config error: wrong type for 'model.init_args.head.init_args.act': expected one of ['relu', 'gelu'], "
        "got 'tanh'",
    ]  # "bf16-mixed" is a str, "8" parses as an int, None is allowed: no problem there


def _chain(*errors: BaseException) -> BaseException:
    """errors[0] raised from errors[1] raised from ... (what jsonargparse builds)."""
    for outer, inner in zip(errors, errors[1:]):
        outer.__cause__ = inner
    return errors[0]


def test_the_innermost_exception_type_picks_the_kind_of_problem():
    config_args = ["fit", f"--model.class_path={HERE}.Model", "--model.lr=fast", "--model.init_args.lrr=1"]
    unknown = _chain(ArgumentError(None, "text never read"), KeyError("text never read"))
    wrong_type = _chain(ArgumentError(None, "text never read"), TypeError("x"), ValueError("x"))
    assert "unknown key 'model.init_args.lrr'" in explain_parse_error(unknown, config_args, {})
    assert "wrong type for 'model.init_args.lr'" in explain_parse_error(wrong_type, config_args, {})
    assert explain_parse_error(unknown, ["fit", "--model.lr=1"], {}) is None  # nothing found: caller's fallback


def test_origin_error_skips_jsonargparse_wrappers():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--w", type=Weights | None)
    cfg = parser.parse_args(["--w=" + yaml.safe_dump({"class_path": f"{HERE}.Weights", "init_args": {"path": "/x"}})])
    with pytest.raises(Exception) as info:
        parser.instantiate_classes(cfg)
    assert len(list(error_chain(info.value))) >= 1
    origin = origin_error(info.value)
    assert isinstance(origin, FileNotFoundError) and str(origin) == "weights '/x' not found"
