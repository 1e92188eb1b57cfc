"""Two real processes (gloo) x two dataloader workers: every key exactly once, for both sources."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from test_data_helpers import make_datamodule, make_samples, write_imagefolder, write_shards


def _run(rank: int, world: int, port: int, root: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = {}
        for source, crop in (("imagefolder", "tokenizer_train"), ("webdataset", "adm_center")):
            dm = make_datamodule(
                Path(root) / source,
                source=source,
                resolution=8,
                train_crop=crop,
                batch_size=3,
                num_workers=2,
                shuffle_train=True,
                infinite_train=False,
            )
            dm.setup("fit")  # no Trainer: rank and world size come from the process group
            result[source] = [k for b in dm.train_dataloader() for k in dm.on_before_batch_transfer(b, 0)["key"]]
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_two_workers_each_key_once(tmp_path):
    samples = make_samples(per_class=4, sizes=[(10, 12)])  # 12 images: divisible by 2 ranks, no padding
    write_imagefolder(tmp_path / "imagefolder" / "train", samples)
    write_shards(tmp_path / "webdataset", samples, num_shards=5)  # 5 shards for 4 readers: shard-level split
    port = 29500 + os.getpid() % 1000
    mp.start_processes(_run, args=(2, port, str(tmp_path), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    per_rank = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for source in ("imagefolder", "webdataset"):
        counts = Counter(k for r in per_rank for k in r[source])
        assert sorted(counts) == sorted(s["key"] for s in samples) and set(counts.values()) == {1}, source
        assert all(r[source] for r in per_rank)  # both ranks got work
