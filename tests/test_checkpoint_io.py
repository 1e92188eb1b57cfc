"""Atomic checkpoint writing: a write that dies half way leaves the previous file loadable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks.atomic_checkpoint import AtomicCheckpointIO, AtomicModelCheckpoint
from vfmvae.utils.checkpoint_io import atomic_open, atomic_save, atomic_write


class ExplodesWhilePickled:
    """Raises during torch.save, after part of the file has been written."""

    def __reduce__(self):
        raise RuntimeError("simulated crash during serialisation")


def _files(d) -> list[str]:
    return sorted(os.listdir(d))


def test_atomic_save_round_trip_and_failed_write_keeps_previous(tmp_path):
    path = tmp_path / "ckpt.pt"
    good = {"w": torch.arange(1000.0), "step": 7}
    atomic_save(good, path)
    size = path.stat().st_size
    bad = {"w": torch.zeros(100_000), "boom": ExplodesWhilePickled()}
    with pytest.raises(RuntimeError, match="simulated crash"):
        atomic_save(bad, path)
    loaded = torch.load(path, weights_only=True)
    assert torch.equal(loaded["w"], good["w"]) and loaded["step"] == 7
    assert path.stat().st_size == size
    assert _files(tmp_path) == ["ckpt.pt"]  # no temp file left behind


def test_partial_bytes_never_reach_target(tmp_path):
    path = tmp_path / "out.bin"
    atomic_write(path, lambda f: f.write(b"old-content"))

    def half_then_fail(f):
        f.write(b"new-con")
        f.flush()
        raise KeyboardInterrupt  # BaseException too

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"old-content"
    with pytest.raises(ValueError, match="write modes"):
        with atomic_open(path, "rb"):
            pass
    with pytest.raises(IsADirectoryError):
        atomic_save({}, tmp_path)


@pytest.mark.slow  # a subprocess (imports torch again)
def test_process_killed_mid_write_leaves_previous_checkpoint(tmp_path, repo_root):
    """SIGKILL inside the write (after half the bytes went to disk): old file intact."""
    path = tmp_path / "model.ckpt"
    script = textwrap.dedent(
        f"""
        import os, signal, torch
        from vfmvae.utils.checkpoint_io import atomic_save, atomic_write
        atomic_save({{"version": 1, "w": torch.ones(10)}}, {str(path)!r})
        def killed_half_way(f):
            f.write(b"x" * 4096)
            f.flush(); os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        atomic_write({str(path)!r}, killed_half_way)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(repo_root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    loaded = torch.load(path, weights_only=True)
    assert loaded["version"] == 1 and torch.equal(loaded["w"], torch.ones(10))


def test_checkpoint_io_plugin_failed_write_keeps_previous(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "sub" / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, path)
    with pytest.raises(RuntimeError, match="simulated crash"):
        io.save_checkpoint({"global_step": 2, "x": ExplodesWhilePickled()}, path)
    assert io.load_checkpoint(path)["global_step"] == 1
    with pytest.raises(TypeError, match="storage_options"):
        io.save_checkpoint({}, path, storage_options={"a": 1})


class _Tiny(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.net(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)


def test_atomic_model_checkpoint_installs_plugin(tmp_path):
    cb = AtomicModelCheckpoint(dirpath=tmp_path, filename="last", every_n_train_steps=1)
    trainer = Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[cb],
        default_root_dir=tmp_path,
    )
    trainer.fit(_Tiny())
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_permissions_follow_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_save({"a": 1}, tmp_path / "p.pt")
    finally:
        os.umask(old)
    assert (tmp_path / "p.pt").stat().st_mode & 0o777 == 0o644
