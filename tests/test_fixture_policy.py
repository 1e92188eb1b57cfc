"""The faithfulness proof travels with the repository: fixtures are in-tree and no test may skip."""

import json
import subprocess
import sys
import textwrap

from conftest import FIXTURES, REPO_ROOT

EXPECTED = [
    "vfmvae_tiny",
    "vfmvae_dinov2_tiny",
    "vfmvae_eva_tiny",
    "vfmvae_mae_tiny",
    "vfmvae_cond_text_tiny",
    "lightningdit_tiny",
    "sit_reg_tiny",
    "transport_cases",
    "cknna_cases",
    "vavae_tiny",
    "sdvae_tiny",
]


def test_every_official_fixture_is_in_the_repository():
    assert FIXTURES.is_relative_to(REPO_ROOT)
    missing = [
        f"{n}{ext}" for n in EXPECTED for ext in (".json", ".safetensors") if not (FIXTURES / f"{n}{ext}").is_file()
    ]
    assert not missing, f"missing fixture files: {missing}"
    for name in EXPECTED:  # each sidecar parses and lists its tensors
        assert "tensors" in json.loads((FIXTURES / f"{name}.json").read_text())


def _run_pytest(tmp_path, body: str, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text((REPO_ROOT / "tests" / "conftest.py").read_text())
    (tmp_path / "test_x.py").write_text(textwrap.dedent(body))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)


def test_a_skip_fails_the_run_and_gpu_tests_are_counted_not_skipped(tmp_path):
    body = """
        import pytest, torch

        def test_ok():
            assert True

        def test_skips():
            pytest.skip("no reason")

        @pytest.mark.gpu
        def test_needs_cuda():
            assert torch.cuda.is_available()
    """
    strict = _run_pytest(tmp_path, body, "--fail-on-skip")
    assert strict.returncode != 0, strict.stdout
    assert "1 test(s) skipped" in strict.stdout
    assert "1 test(s) marked gpu deselected" in strict.stdout
    lax = _run_pytest(tmp_path, body)
    assert lax.returncode == 0, lax.stdout


def test_a_missing_fixture_folder_fails_instead_of_skipping(tmp_path):
    body = """
        def test_uses_fixtures(fixtures_dir):
            assert fixtures_dir.is_dir()
    """
    # The copied conftest resolves FIXTURES relative to its own folder, which has no fixtures.
    out = _run_pytest(tmp_path, body, "--fail-on-skip")
    assert out.returncode != 0 and "fixtures folder missing" in out.stdout, out.stdout
