"""Shared pytest setup.

The hub variables must be set before transformers/timm/huggingface_hub are imported, otherwise
the hub client retries HEAD requests for about a minute before failing (docs/design.md, "Frozen networks").
"""

import json
import os
import subprocess

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
# Numbers produced by running the official code on tiny random models (tests/fixtures/official/README.md).
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "official"

# Tiny-model tests are dominated by per-op overhead; one intra-op thread is faster on the 2-core CI machine
# (and leaves the second core to dataloader workers and the second DDP process).
torch.set_num_threads(1)
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


@pytest.fixture(autouse=True)
def _one_cpu_thread():
    """Every test starts on one intra-op thread, and a thread count a test sets (e.g. `cpu_threads`) is undone.

    Tiny models are dominated by per-op overhead: OpenMP threads only add spin contention on the shared 2-core
    CI machine (runs were up to 20x slower with them).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """`tests/fixtures/official`: the official-code fixtures that travel with the repository.

    A missing folder fails the test (the faithfulness proof must never be skipped); a missing file fails
    where the test opens it.
    """
    if not FIXTURES.is_dir():
        pytest.fail(
            f"official-code fixtures folder missing: {FIXTURES} (restore it with `git checkout tests/fixtures`)"
        )
    return FIXTURES


def pytest_collection_modifyitems(config, items):
    """Deselect tests marked `gpu` when no CUDA device exists, and say how many (they are not skips)."""
    if torch.cuda.is_available():
        return
    gpu = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu:
        items[:] = [item for item in items if item.get_closest_marker("gpu") is None]
        config.hook.pytest_deselected(items=gpu)
        config._vfmvae_gpu_deselected = len(gpu)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    n = getattr(config, "_vfmvae_gpu_deselected", 0)
    terminalreporter.write_line(f"{n} test(s) marked gpu deselected (no CUDA device)")
    skipped = terminalreporter.stats.get("skipped", [])
    if skipped and config.getoption("--fail-on-skip"):
        terminalreporter.write_line(
            f"FAILED: {len(skipped)} test(s) skipped; `make test` allows no skip (mark hardware needs with gpu)",
            red=True,
        )


def pytest_addoption(parser):
    parser.addoption(
        "--fail-on-skip", action="store_true", help="exit with failure when any test is skipped (make test, CI)"
    )


def pytest_sessionfinish(session, exitstatus):
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped and session.config.getoption("--fail-on-skip") and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


def repo_files(root: Path = REPO_ROOT) -> list[Path]:
    """The repository's files: tracked ones and new ones git does not ignore (what a commit would hold)."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout
    return [root / n for n in out.decode().split("\0") if n and (root / n).is_file() and not (root / n).is_symlink()]


def official_fixture(name: str) -> tuple[dict[str, torch.Tensor], dict, dict[str, torch.Tensor]]:
    """``(tensors, meta, state_dict)`` of ``tests/fixtures/official/<name>.{safetensors,json}``.

    ``state_dict`` holds the ``state_dict.*`` tensors with that prefix removed (the official module's weights).
    """
    from safetensors.torch import load_file

    tensors = load_file(FIXTURES / f"{name}.safetensors")
    meta = json.loads((FIXTURES / f"{name}.json").read_text())
    return tensors, meta, {k[len("state_dict.") :]: v for k, v in tensors.items() if k.startswith("state_dict.")}


def official_fixtures(name: str, build, fixture: str = "fx", model: str = "model"):
    """Two module-scoped fixtures for tests against an official fixture: ``fixture`` -> `official_fixture(name)`
    and ``model`` -> ``build(meta, state_dict)`` (our network loaded from the official weights).

    Use as ``fx, model = official_fixtures("sdvae_tiny", lambda meta, sd: ...)`` at module level.
    """

    @pytest.fixture(scope="module", name=fixture)
    def _fixture(fixtures_dir):
        return official_fixture(name)

    @pytest.fixture(scope="module", name=model)
    def _model(request):
        _, meta, state = request.getfixturevalue(fixture)
        return build(meta, state)

    return _fixture, _model


def close(actual, expected, name: str, atol: float = 1e-5, rtol: float = 0.0) -> None:
    """``torch.testing.assert_close`` whose message starts with ``name`` (official-fixture comparisons: 1e-5)."""
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


def cpu_trainer(**overrides):
    """A quiet single-process CPU Lightning `Trainer` for tiny test runs; ``overrides`` replace any default.

    Defaults: no logger, no checkpointing, no progress bar or model summary, no sanity validation.
    """
    from lightning.pytorch import Trainer

    kw = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    return Trainer(**{**kw, **overrides})


def print_config(capsys, *configs, extra: tuple[str, ...] = ()) -> dict:
    """The config ``vfmvae fit --config ... --print_config`` resolves from ``configs`` (stacked in order) and
    ``extra`` arguments, parsed back from its output (the run itself never starts)."""
    import yaml

    from lightning_modules.cli import main

    args = ["fit"]
    for config in configs:
        args += ["--config", str(config)]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, *extra, "--print_config"])
    out, err = capsys.readouterr()
    assert exit_info.value.code in (0, None), err
    return yaml.safe_load(out)


def build_cli(*configs, extra: tuple[str, ...] = ()):
    """A `VFMVAECLI` over the stacked ``configs`` (+ ``extra`` arguments) that builds the model, data module and
    trainer without running them (``cli.model``, ``cli.datamodule``, ``cli.trainer``)."""
    from lightning.pytorch import LightningDataModule, LightningModule

    from lightning_modules.cli import VFMVAECLI

    args = [a for config in configs for a in ("--config", str(config))]
    return VFMVAECLI(
        model_class=LightningModule,
        datamodule_class=LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=[*args, *extra],
    )


def stacked_yaml(files) -> dict:
    """What LightningCLI makes of stacked YAML configs (dicts merge, lists and scalars replace)."""
    import yaml

    def merge(a, b):
        return {
            k: merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
            for k, v in {**a, **b}.items()
        }

    out: dict = {}
    for f in files:
        out = merge(out, yaml.safe_load(Path(f).read_text()))
    return out


def save_tiny_causal_lm(folder, seed: int = 3):
    """A tiny random Qwen2 language model and the debug tokenizer saved to ``folder`` (text-to-image tests)."""
    from transformers import Qwen2Config, Qwen2Model

    from vfmvae.text import debug_tokenizer

    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=400,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    Qwen2Model(cfg).save_pretrained(folder)
    debug_tokenizer().save_pretrained(folder)
    return folder
