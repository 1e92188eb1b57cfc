"""Shared pytest setup.

The hub variables must be set before transformers/timm/huggingface_hub are imported, otherwise
the hub client retries HEAD requests for about a minute before failing (see ecosystem.md §1.2).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"

# Tiny-model tests are dominated by per-op overhead; one intra-op thread is faster on the 2-core CI machine
# (and leaves the second core to dataloader workers and the second DDP process).
torch.set_num_threads(1)
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """`../shared/fixtures`; tests that need it skip only when the folder is absent."""
    if not FIXTURES.is_dir():
        pytest.skip(f"shared fixtures folder not found at {FIXTURES}")
    return FIXTURES


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT
