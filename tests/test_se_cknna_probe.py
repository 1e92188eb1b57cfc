"""SE-CKNNA probe callback (docs/design.md, "SE-CKNNA"): per-block CKNNA of REG / LightningDiT on a fixed
probe set, tokenizer SE-CKNNA per condition, TensorBoard scalars + heat-map read back from the event file, checkpoint restore.

Expected values are recomputed independently: the networks are run by hand (hooks-free `return_hidden`) at the
probe's noise level 0 (x_t = x, so no noise draw is involved; REG time 0, LightningDiT time 1), the reference
features come from the metrics package's extractors, and the tokenizer path is checked against the metrics
package's *file-based* `extract_condition_features` on the same PNGs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cpu_trainer
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from test_diffusion_helpers import TinyLatentDataModule, TinyLatents, tiny_module
from torch.utils.data import DataLoader

from callbacks.ema import EMACallback
from callbacks.joint_alignment import JointAlignmentCallback
from callbacks.se_cknna_probe import PROBE_PRESETS, SECKNNAProbeCallback, SECKNNAProbeConfig, load_probe_set
from vfmvae.metrics import cknna
from vfmvae.metrics.se_cknna import DINOv2SEExtractor, TokenizerSEExtractor, extract_condition_features, se_cknna
from vfmvae.metrics.se_transforms import list_images

NULL = 1000


def _events(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _trainer(tmp_path, callbacks, max_steps, name="run", **kw):
    logger = TensorBoardLogger(str(tmp_path / "tb"), name=name, version="v")
    kw.setdefault("enable_checkpointing", True)
    return cpu_trainer(max_steps=max_steps, logger=logger, callbacks=callbacks, log_every_n_steps=1000, **kw)


def _probe(**overrides):
    # A separate probe set (seed 1) from the training data (seed 0): the probe never uses the batch.
    return SECKNNAProbeCallback(
        "debug", overrides={"noise_fraction": 0.0, **overrides}, dataset=TinyLatents(n=8, seed=1)
    )


def _reference(cb: SECKNNAProbeCallback) -> torch.Tensor:
    images = cb.probe_set.images.permute(0, 2, 3, 1).numpy()
    return DINOv2SEExtractor(lambda x: cb.vfm(x, [-1])[0], resolution=56, patch_size=14).clean(images)


@torch.no_grad()
def _reg_expected(net, cb, class_vfm) -> dict[str, float]:
    x = cb.probe_set.latents
    images = cb.probe_set.images.float() / 255
    # Official REG prefetch: bilinear resize without antialias before DINOv2 (64 px -> 56 px here).
    cls = class_vfm(images, [-1], size=56, interpolation="bilinear", antialias=False, return_cls=True)[1][0]
    n, depth = len(x), len(net.blocks)
    net.eval()
    out, hidden = net(x, torch.zeros(n), torch.full((n,), NULL), cls, return_hidden=list(range(depth)))
    feats = {"embedder": net.embed_tokens(x, cls)[:, 1:].mean(1)}
    feats.update({f"block_{i}": hidden[i][:, 1:].mean(1) for i in range(depth)})  # class token excluded
    feats["final_layer"] = out.velocity.flatten(2).mean(2)
    feats["projector_0"] = out.projections[0].mean(1)  # official: all tokens, the class token included
    ref = _reference(cb)
    return {k: cknna(v, ref, topk=3) for k, v in feats.items()}


@pytest.mark.parametrize("cls_source", ["auto", "reference"])
def test_reg_probe_logs_blocks_and_heatmap_on_ema_weights(tmp_path, cls_source):
    """Debug REG trained with joint alignment + EMA + the probe; ``auto`` takes the alignment callback's class
    token (what the model trains with), ``reference`` the probe VFM's own CLS."""
    torch.manual_seed(0)
    module = tiny_module("reg", lr=1e-2)
    ema = EMACallback(["net"], preset="dit", decay=0.5)
    align = JointAlignmentCallback(vfm="debug-dinov2", image_size=56)
    probe = _probe(cls_source=cls_source)
    trainer = _trainer(tmp_path, [ema, align, probe], max_steps=4, enable_checkpointing=False)
    trainer.fit(module, datamodule=TinyLatentDataModule(n=8, batch_size=4))
    assert [h["step"] for h in probe.history] == [2, 4]
    class_vfm = align.vfm if cls_source == "auto" else probe.vfm

    acc = _events(Path(trainer.logger.log_dir))
    tags = set(acc.Tags()["scalars"])
    blocks = [f"probe/cknna/block_{i}" for i in range(3)]
    assert (
        set(blocks)
        | {
            "probe/cknna/embedder",
            "probe/cknna/final_layer",
            "probe/cknna/projector_0",
            "probe/cknna/mean_over_blocks",
            "probe/seconds",
        }
        <= tags
    )
    assert [e.step for e in acc.Scalars("probe/cknna/block_1")] == [2, 4]
    assert "probe/cknna_heatmap" in acc.Tags()["images"]
    img = acc.Images("probe/cknna_heatmap")[-1]
    assert img.step == 4 and img.width > 100 and img.height > 100

    # The logged step-4 values are those of the EMA weights (swapped in), and the raw weights are back after.
    assert not ema.ema.swapped
    with ema.ema.swap():
        expected = _reg_expected(module.net, probe, class_vfm)
    raw = _reg_expected(module.net, probe, class_vfm)
    logged = {k: acc.Scalars(f"probe/cknna/{k}")[-1].value for k in expected}
    for k, v in expected.items():
        assert logged[k] == pytest.approx(v, abs=1e-5), k
    assert max(abs(raw[k] - expected[k]) for k in expected) > 1e-4  # EMA really differs from the raw weights
    assert logged["block_1"] == pytest.approx(probe.history[-1]["scores"]["block_1"], abs=1e-6)
    other = _reg_expected(module.net, probe, probe.vfm if cls_source == "auto" else align.vfm)
    assert max(abs(other[k] - raw[k]) for k in raw) > 1e-4  # the class-token source matters


@torch.no_grad()
def _lightningdit_expected(net, cb) -> dict[str, float]:
    x = cb.probe_set.latents
    n, depth = len(x), len(net.blocks)
    v, hidden = net.eval()(x, torch.ones(n), torch.full((n,), NULL), return_hidden=list(range(depth)))
    ref = _reference(cb)
    feats = {f"block_{i}": hidden[i].mean(1) for i in range(depth)}
    feats["embedder"], feats["final_layer"] = net.embed_tokens(x).mean(1), v.flatten(2).mean(2)
    return {k: cknna(f, ref, topk=3) for k, f in feats.items()}


def test_lightningdit_probe_state_restores_from_checkpoint(tmp_path):
    torch.manual_seed(0)
    ckpt_dir = tmp_path / "ckpt"
    probe = _probe(every_n_steps=1, probe_on_fit_start=True)
    save = ModelCheckpoint(dirpath=str(ckpt_dir), save_last=True, every_n_train_steps=2)
    module = tiny_module("lightningdit", lr=1e-2)
    trainer = _trainer(tmp_path, [probe, save], max_steps=2)
    trainer.fit(module, datamodule=TinyLatentDataModule(n=8, batch_size=4))
    assert [h["step"] for h in probe.history] == [0, 1, 2]  # fit start + every step
    expected = _lightningdit_expected(module.net, probe)
    for k, v in expected.items():
        assert probe.history[-1]["scores"][k] == pytest.approx(v, abs=1e-5), k

    # Resume in a fresh process-like setup: history comes back from the checkpoint and keeps growing.
    probe2 = _probe(every_n_steps=1, probe_on_fit_start=True)
    trainer2 = _trainer(tmp_path, [probe2], max_steps=4, name="run2", enable_checkpointing=False)
    trainer2.fit(
        tiny_module("lightningdit", lr=1e-2),
        datamodule=TinyLatentDataModule(n=8, batch_size=4),
        ckpt_path=str(ckpt_dir / "last.ckpt"),
    )
    assert [h["step"] for h in probe2.history] == [0, 1, 2, 3, 4]  # no second probe at the resumed step 2
    assert probe2.history[:3] == probe.history
    acc = _events(Path(trainer2.logger.log_dir))
    assert [e.step for e in acc.Scalars("probe/cknna/block_0")] == [3, 4]
    image = acc.Images("probe/cknna_heatmap")[-1]
    assert image.step == 4
    values, rows, steps = probe2.heatmap()
    assert rows == ["embedder", "block_0", "block_1", "final_layer"] and steps == [0, 1, 2, 3, 4]
    assert values.shape == (4, 5) and np.isfinite(values).all()


# ------------------------------------------------------------------------------------------------- tokenizer
class TinyTokenizerModule(LightningModule):
    """A minimal tokenizer-training stand-in: the debug VFMVAE trained on a reconstruction loss (64 px)."""

    def __init__(self):
        super().__init__()
        from vfmvae.tokenizer import VFMVAE

        self.tokenizer = VFMVAE("debug", vfm_config={"compute_dtype": "float32"})

    def probe_network(self):
        return self.tokenizer

    def training_step(self, batch, batch_idx):
        x = batch["image"].float() / 255
        out = self.tokenizer(x)
        return (out.image - (2 * x - 1)).square().mean()

    def configure_optimizers(self):
        return torch.optim.Adam([p for p in self.tokenizer.parameters() if p.requires_grad], lr=1e-3)


def _write_pngs(folder: Path, n: int, size: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        a, b, c = rng.uniform(0.5, 4.0, 3)
        base = np.stack([np.sin(a * 6 * xx + i), np.cos(b * 6 * yy), np.sin(c * 6 * (xx + yy))], -1)
        img = np.clip(127.5 * (base + 1) + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"img_{i:03d}.png")


def test_tokenizer_se_cknna_per_condition_matches_file_based_extraction(tmp_path):
    torch.manual_seed(0)
    folder = tmp_path / "probe_images"
    _write_pngs(folder, 6, 256)  # 256 px: the official SE resolution (every equivariance scale stays /64)
    conditions = ["clean", "equivariance", "noise_0.100"]
    probe = SECKNNAProbeCallback(
        "debug",
        overrides={
            "source": "image_folder",
            "root": str(folder),
            "image_size": 256,
            "conditions": conditions,
            "every_n_steps": 1,
            "use_posterior_sample": False,
        },
    )
    module = TinyTokenizerModule()
    train = [{"image": torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)} for _ in range(2)]
    trainer = _trainer(tmp_path, [probe], max_steps=1, enable_checkpointing=False)
    trainer.fit(module, train_dataloaders=DataLoader(train, batch_size=2))

    paths = list_images(folder)
    ref = extract_condition_features(
        DINOv2SEExtractor(lambda x: probe.vfm(x, [-1])[0], resolution=56, patch_size=14), paths, conditions
    )
    module.tokenizer.eval()
    model = extract_condition_features(
        TokenizerSEExtractor(module.tokenizer.encode, use_sample=False), paths, conditions
    )
    expected = se_cknna(model, ref, topk=3)
    acc = _events(Path(trainer.logger.log_dir))
    for cond, value in expected.items():
        assert acc.Scalars(f"probe/se_cknna/{cond}")[-1].value == pytest.approx(value, abs=1e-5), cond
    assert "probe/se_cknna_heatmap" in acc.Tags()["images"]
    assert probe.heatmap()[1] == conditions


# ------------------------------------------------------------------------------------------------- config / errors
def test_config_presets_and_errors():
    assert PROBE_PRESETS["diffusion"].reference_vfm == "dinov2-vitb14" and PROBE_PRESETS["diffusion"].topk == 10
    assert PROBE_PRESETS["diffusion"].noise_fraction == 0.5
    with pytest.raises(ValueError, match="unknown probe source"):
        SECKNNAProbeConfig(source="batch")
    with pytest.raises(ValueError, match="needs root"):
        SECKNNAProbeConfig(source="image_folder")
    with pytest.raises(ValueError, match="num_images"):
        SECKNNAProbeConfig(root="x", num_images=5, topk=10)
    with pytest.raises(ValueError, match="unknown SE conditions"):
        SECKNNAProbeConfig(root="x", conditions=("blur",))
    with pytest.raises(ValueError, match="unknown SECKNNAProbeConfig fields"):
        SECKNNAProbeCallback("debug", overrides={"every_n_step": 3})
    with pytest.raises(ValueError, match="needs the dataset"):
        load_probe_set(PROBE_PRESETS["debug"])


def test_probe_set_is_deterministic_and_diffusion_needs_latents(tmp_path):
    cfg = SECKNNAProbeConfig(source="dataset", num_images=5, topk=3)
    data = TinyLatents(n=12, seed=3)
    a, b = load_probe_set(cfg, data), load_probe_set(cfg, data)
    assert torch.equal(a.images, b.images) and torch.equal(a.latents, b.latents) and len(a) == 5
    assert a.keys == sorted(a.keys, key=lambda k: int(k[1:]))  # sorted indices: the same subset every run
    images_only = [{"image": item["image"]} for item in (data[i] for i in range(8))]
    cb = SECKNNAProbeCallback("debug", dataset=images_only)
    trainer = _trainer(tmp_path, [cb], max_steps=1, enable_checkpointing=False)
    with pytest.raises(ValueError, match="needs latents"):
        trainer.fit(tiny_module("lightningdit"), datamodule=TinyLatentDataModule(n=4, batch_size=4))


def test_probe_does_not_change_training(tmp_path):
    """The probe draws its noise from its own generators and builds its VFM under fork_rng: a run with the probe
    ends with exactly the weights of a run without it (the transport loss draws t and noise globally)."""

    def run(callbacks):
        torch.manual_seed(0)
        module = tiny_module("lightningdit", lr=1e-2)
        trainer = _trainer(tmp_path, callbacks, max_steps=3, enable_checkpointing=False)
        trainer.fit(module, datamodule=TinyLatentDataModule(n=8, batch_size=4, shuffle=True))
        return module.net.state_dict()

    plain = run([])
    probe = _probe(every_n_steps=1, probe_on_fit_start=True, noise_fraction=0.5, max_blocks=1)
    probed = run([probe])
    for k, v in plain.items():
        assert torch.equal(v, probed[k]), k
    # max_blocks bounds the CKNNAs per probe (evenly spaced blocks; here only the first of 2).
    assert [h["step"] for h in probe.history] == [0, 1, 2, 3]
    assert [k for k in probe.history[-1]["scores"] if k.startswith("block_")] == ["block_0"]
    assert all(h["seconds"] > 0 for h in probe.history)


def test_block_selection():
    from callbacks.se_cknna_probe import _select_blocks

    assert _select_blocks(28, 4) == [0, 9, 18, 27] and _select_blocks(28, None) == list(range(28))
    assert _select_blocks(3, 8) == [0, 1, 2] and _select_blocks(28, 2) == [0, 27]


@pytest.mark.slow
def test_probe_on_the_tokenizer_module_uses_its_ema(tmp_path):
    """The real `TokenizerModule` (debug stage 0): the probe finds `tokenizer` and the module's `ema`, and logs the
    SE-CKNNA of the EMA weights."""
    from lightning_modules.tokenizer import TokenizerModule

    folder = tmp_path / "probe_images"
    _write_pngs(folder, 6, 256)
    torch.manual_seed(0)
    module = TokenizerModule(
        stage=0, tokenizer="debug", vfm_config={"compute_dtype": "float32"}, loss_overrides={"lpips": 0.0},
        equivariance="debug", discriminator="debug", global_batch_size=2, lr=1e-2, ema_halflife_nimg=4.0,
        ema_rampup=None, seed=0,  # no ramp-up: the EMA must differ from the raw weights after 2 steps
    )  # fmt: skip
    probe = SECKNNAProbeCallback("debug", overrides={
        "source": "image_folder", "root": str(folder), "image_size": 256, "conditions": ["clean"],
        "every_n_steps": 2, "use_posterior_sample": False})  # fmt: skip
    data = [{"image": torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8), "label": 0, "key": f"k{i}"}
            for i in range(4)]  # fmt: skip
    trainer = _trainer(tmp_path, [probe], max_steps=2, enable_checkpointing=False, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=2))
    assert [h["step"] for h in probe.history] == [2] and not module.ema.swapped

    paths = list_images(folder)
    ref = extract_condition_features(
        DINOv2SEExtractor(lambda x: probe.vfm(x, [-1])[0], resolution=56, patch_size=14), paths, ["clean"]
    )
    module.tokenizer.eval()
    with module.ema.swap():
        ema_feats = extract_condition_features(TokenizerSEExtractor(module.tokenizer.encode, use_sample=False), paths)
    raw_feats = extract_condition_features(TokenizerSEExtractor(module.tokenizer.encode, use_sample=False), paths)
    expected = cknna(ema_feats["clean"], ref["clean"], topk=3)
    assert probe.history[-1]["scores"]["clean"] == pytest.approx(expected, abs=1e-5)
    assert not torch.allclose(ema_feats["clean"], raw_feats["clean"])  # the EMA really differs from the raw weights
