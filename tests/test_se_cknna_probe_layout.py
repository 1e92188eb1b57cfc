"""TensorBoard layout helper (docs/design.md, "SE-CKNNA") and the probe's data plumbing: naming rule,
custom-scalar layout written to the event file, run names per stage, heat-map rendering, probe set from a real latent cache, and two gloo
ranks giving the same probe numbers as one process (features gathered by all ranks, rank 0 logs)."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger
from test_diffusion_helpers import TinyLatents

from callbacks.se_cknna_probe import SECKNNAProbeCallback, SECKNNAProbeConfig, _chunks, load_probe_set
from callbacks.tb_layout import (
    apply_layout,
    custom_scalar_layout,
    invalid_tags,
    render_heatmap,
    run_version,
    tag,
    tensorboard_logger,
)


def test_naming_rule_and_tags():
    assert tag("probe", "cknna", "block_3") == "probe/cknna/block_3"
    with pytest.raises(ValueError, match="unknown TensorBoard tag group"):
        tag("samples", "grid")
    with pytest.raises(ValueError, match="non-empty"):
        tag("loss")
    assert invalid_tags(
        [
            "loss/total",
            "metric/fid",
            "probe/seconds",
            "grid/samples",
            "train/lr",
            "ema/beta",
            "samples/grid",
            "reconstruction/input",
            "loss/",
        ]
    ) == ["loss/", "reconstruction/input", "samples/grid"]


def _charts(layout):
    return {(cat, title): regexes for cat, charts in layout.items() for title, (_, regexes) in charts.items()}


def test_layout_groups_cover_the_expected_tags():
    charts = _charts(custom_scalar_layout())
    assert {cat for cat, _ in charts} == {"loss", "metric", "probe", "train"}

    def charts_of(t):
        return {title for (cat, title), rx in charts.items() if any(re.search(r, t) for r in rx)}

    assert charts_of("probe/cknna/block_12") == {"CKNNA per block (DiT vs VFM)"}
    assert charts_of("probe/cknna/projector_0") == {"CKNNA embedder / final layer / projector"}
    assert charts_of("probe/se_cknna/noise_0.050") == {"SE-CKNNA per condition (latent vs VFM)"}
    assert charts_of("probe/seconds") == {"probe cost (seconds)"}
    assert charts_of("loss/total") == {"total"}
    assert charts_of("loss/proj") == {"terms"}
    assert charts_of("loss/G/lpips") == {"generator terms"}
    assert charts_of("loss/D/total") == {"total", "discriminator terms"}
    assert charts_of("metric/fid") == {"generation (FID, sFID, IS, P/R)", "all"}
    assert charts_of("train/lr") == {"learning rate"}
    assert charts_of("ema/beta") == {"EMA / guard / counters"}


def test_layout_lands_in_the_event_file_and_run_names(tmp_path):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.custom_scalar import layout_pb2

    assert run_version(1, "weak alignment") == "stage1_weak_alignment" and run_version(None, "reg") == "reg"
    with pytest.raises(ValueError):
        run_version()
    logger = tensorboard_logger(str(tmp_path), "vfmvae-run", stage=2, stage_name="ssim_finetune")
    assert logger.log_dir.endswith("vfmvae-run/stage2_ssim_finetune")
    trainer = Trainer(accelerator="cpu", logger=[logger, CSVLogger(str(tmp_path))], enable_progress_bar=False)
    assert apply_layout(trainer) == 1  # only the TensorBoard logger takes a layout
    logger.experiment.flush()
    events = [
        e
        for f in sorted(__import__("pathlib").Path(logger.log_dir).glob("events.*"))
        for e in EventFileLoader(str(f)).Load()
    ]
    values = [v for e in events if e.HasField("summary") for v in e.summary.value]
    layout = [v for v in values if v.tag == "custom_scalars__config__"]
    assert len(layout) == 1
    parsed = layout_pb2.Layout()
    parsed.ParseFromString(layout[0].tensor.string_val[0])
    assert {c.title for c in parsed.category} == {"loss", "metric", "probe", "train"}


def test_heatmap_render():
    values = np.array([[0.1, 0.2, np.nan], [0.3, 0.4, 0.5]])
    img = render_heatmap(values, ["block_0", "block_1"], [10, 20, 30], title="t")
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) > 100
    assert img.std() > 0  # not a blank canvas
    with pytest.raises(ValueError, match="do not match"):
        render_heatmap(values, ["block_0"], [10, 20, 30])


def test_probe_set_from_a_latent_cache(tmp_path):
    from test_latent_cache import StandInTokenizer, make_folder, run_cache

    from datamodules.latent_dataset import LatentDataset

    run_cache(make_folder(tmp_path / "data", corrupt=False), tmp_path / "cache", StandInTokenizer())
    cfg = SECKNNAProbeConfig(source="latent_cache", root=str(tmp_path / "cache"), num_images=6, topk=3, seed=5)
    ps = load_probe_set(cfg)
    ds = LatentDataset(tmp_path / "cache", policy="lightningdit", return_images=True, seed=5)
    index = {ds[i]["key"]: i for i in range(len(ds))}
    assert len(ps) == 6 and ps.latents.shape == (6, 4, 4, 4) and ps.images.dtype == torch.uint8
    for k, key in enumerate(ps.keys):  # the same (normalised latent, stored pixels) pairs as the dataset gives
        item = ds[index[key]]
        assert torch.equal(ps.latents[k], item["latent"]) and torch.equal(ps.images[k], item["image"])
    assert load_probe_set(cfg).keys == ps.keys


def test_chunks_cover_every_index_once_with_equal_sizes():
    chunks = _chunks(10, 4)
    assert [len(idx) for idx, _ in chunks] == [4, 4, 4] and [v for _, v in chunks] == [4, 4, 2]
    assert sorted(i for idx, v in chunks for i in idx[:v]) == list(range(10))


# ------------------------------------------------------------------------------------------------- 2 ranks
def _fake_trainer(rank: int, world: int):
    return SimpleNamespace(
        global_rank=rank, world_size=world, is_global_zero=rank == 0, global_step=3, callbacks=[], loggers=[]
    )


def _probe_scores(rank: int, world: int, net) -> dict | None:
    torch.manual_seed(0)  # identical reference VFM on every rank
    cb = SECKNNAProbeCallback("debug", overrides={"batch_size": 3}, dataset=TinyLatents(n=8, seed=1))
    trainer, module = _fake_trainer(rank, world), SimpleNamespace(net=net)
    cb.setup(trainer, module, "fit")
    return cb.probe(trainer, module)


def _worker(rank: int, world: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        from vfmvae.dit import build_lightningdit

        torch.manual_seed(0)
        net = build_lightningdit("debug", input_size=4)
        scores = _probe_scores(rank, world, net)  # 3 chunks over 2 ranks: rank 1 repeats chunk 0 once
        if rank == 0:
            single = _probe_scores(0, 1, net)  # the same probe in one process (no gather)
            torch.save({"two": scores, "one": single}, out)
        else:
            assert scores is None  # only rank 0 scores and logs
        dist.barrier()  # no rank was left waiting inside the probe
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_match_one_process(tmp_path):
    out = tmp_path / "scores.pt"
    mp.start_processes(_worker, args=(2, str(tmp_path / "store"), str(out)), nprocs=2, join=True, start_method="fork")
    res = torch.load(out)
    assert set(res["two"]) >= {"embedder", "block_0", "block_1", "final_layer", "mean_over_blocks"}
    for k, v in res["one"].items():
        assert res["two"][k] == pytest.approx(v, abs=1e-6, nan_ok=True), k
