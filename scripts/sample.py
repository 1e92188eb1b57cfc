"""Sample N images from a diffusion checkpoint with the paper's sampler: PNGs + one ADM-layout `.npz`.

    python scripts/sample.py --ckpt RUN.ckpt --tokenizer TOKENIZER --out outputs/samples/run [--num-images 50000]
    make sample CKPT=... TOKENIZER=... [STATS=...] [NUM=50000] [OUT=...] [DEVICES=...]

Inputs (diffusion.md §3.4-§3.5):
* ``--ckpt``: a training checkpoint of `DiffusionModule` (its EMA weights, from the EMA callback's
  state; ``--weights raw`` for the live ones; the network is rebuilt from the saved hyper-parameters)
  or a released official LightningDiT / REG file (``--model lightningdit|reg``; the EMA entry is
  used; constructor kwargs are the VFM-VAE runs' unless ``--official-kwargs`` gives a JSON/YAML).
* ``--tokenizer``: decoder source (a ``save_pretrained`` folder, or the official release ``.pth`` with
  ``--tokenizer-kwargs`` = its G_kwargs), or ``none`` for a random ``--tokenizer-preset`` decoder (tests).
* ``--latent-stats``: ``latents_stats.pt`` (ours or the official file); default: the statistics a
  training checkpoint recorded from its latent cache.

Sampler: each family's paper preset (LightningDiT ``lightningdit-cfg``: Euler ODE, 250 points, shift
0.3, CFG 4.0 on channels 0-2 where t >= 0.125; REG ``reg-cfg``: Euler-Maruyama SDE, 250 points,
CFG 4.0 + class-token CFG where t <= 0.8); ``--cfg-scale 1`` for the no-CFG numbers, ``--sampler``
for any `vfmvae.transport.SAMPLER_PRESETS` entry.

Work is split into chunks of ``--chunk-size`` images; rank r of a DDP Lightning ``predict`` run takes
the unfinished chunks k with k % world == r. A chunk is finished when its record
``chunks/chunk_{k}.json`` exists (written atomically after its PNGs), so a second run redoes nothing
that is finished. Seeds: batch (k, offset) uses ``seed_rule`` below, so every rank draws its own
noise and the images do not depend on the number of processes. Labels: ``random`` (randint(0, 1000),
the paper's protocol) or ``balanced`` (image i gets class i % 1000). When every chunk exists, rank 0
packs ``samples_{N}x{H}x{W}x3.npz`` (``arr_0`` uint8 NHWC, PNGs in file-name order, as the official
``save_images_as_npz.py``) with ``provenance`` (JSON: tokenizer and network hashes, seeds, label mode,
sampler) and a ``.json`` twin.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch import LightningDataModule, LightningModule, Trainer  # noqa: E402
from lightning.pytorch.callbacks import BasePredictionWriter  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from lightning_modules.diffusion_sampling import class_labels, sample_latents, sampler_config  # noqa: E402
from vfmvae.codec import signed_to_uint8  # noqa: E402
from vfmvae.dit.networks import build_diffusion_network  # noqa: E402
from vfmvae.provenance import state_dict_sha256, to_jsonable  # noqa: E402
from vfmvae.tokenizer.loading import load_decoder, load_latent_stats  # noqa: E402
from vfmvae.utils.checkpoint_io import atomic_save  # noqa: F401,E402 - same atomic-IO module as checkpoints

log = logging.getLogger("sample")

SEED_RULE = "seed of the batch starting at image i of chunk k = (base_seed * 1_000_003 + i) mod 2**63"
# Constructor kwargs of the paper's runs for released official files (diffusion.md §3.1).
PAPER_OFFICIAL_KWARGS = {
    "lightningdit": dict(
        input_size=16,
        patch_size=1,
        in_channels=32,
        use_qknorm=True,
        use_swiglu=True,
        use_rope=True,
        use_rmsnorm=True,
        wo_shift=False,
    ),
    "reg": dict(
        input_size=16,
        patch_size=1,
        in_channels=32,
        encoder_depth=8,
        z_dims=[768],
        qk_norm=True,
        projector_dim=2048,
        cls_token_dim=768,
        path_type="linear",
    ),
}
# Settings that must not change between a run and its resumption.
RESUME_KEYS = (
    "num_images",
    "chunk_size",
    "seed",
    "label_mode",
    "sampler",
    "network_sha256",
    "tokenizer_sha256",
    "latent_stats",
)


def batch_seed(base_seed: int, first_index: int) -> int:
    return (int(base_seed) * 1_000_003 + int(first_index)) % (2**63)


# ---------------------------------------------------------------------- network loading
def _ema_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    for key, state in ckpt.get("callbacks", {}).items():
        if key.startswith("EMACallback") and isinstance(state, dict) and state.get("ema"):
            params = state["ema"]["params"]
            return {**state["ema"].get("buffers", {}), **params}
    return None


def load_network(path: str, model: str | None, weights: str, official_kwargs: str | None):
    """``(net, family, record, training_provenance)`` from a training or an official checkpoint."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"diffusion checkpoint not found: {p}")
    ckpt = torch.load(p, map_location="cpu", weights_only=False)
    if isinstance(ckpt, dict) and "hyper_parameters" in ckpt and "state_dict" in ckpt:
        hp = ckpt["hyper_parameters"]
        family = hp["network"]
        if model is not None and model != family:
            raise ValueError(f"--model {model} but the checkpoint holds a {family} network")
        net = build_diffusion_network(
            family,
            hp.get("preset"),
            hp.get("network_overrides"),
            repa_encoder_depth=hp.get("repa_encoder_depth"),
            repa_projector_dim=hp.get("repa_projector_dim", 2048),
            repa_z_dim=hp.get("repa_z_dim", 768),
        )
        raw = {k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
        state, used = raw, "raw"
        if weights == "ema":
            ema = _ema_state(ckpt)
            if ema is None:
                raise KeyError(f"{p} has no EMA state (EMACallback); pass --weights raw to sample the live weights")
            # EMA also tracks non-persistent buffers (position/RoPE tables): keep state_dict keys only.
            averaged = {k[4:]: v for k, v in ema.items() if k.startswith("net.") and k[4:] in raw}
            state, used = {**raw, **averaged}, "ema"
        net.load_state_dict(state, strict=True)
        provenance = ckpt.get("diffusion", {}).get("provenance", {})
        record = {"source": str(p), "kind": "training", "weights": used, "global_step": ckpt.get("global_step")}
        return net.eval(), family, record, provenance
    if model is None:
        raise ValueError(
            f"{p} is not a DiffusionModule checkpoint; say which official network it is with --model lightningdit|reg"
        )
    from vfmvae.dit import from_official_lightningdit, from_official_reg

    kwargs = PAPER_OFFICIAL_KWARGS[model]
    if official_kwargs:
        text = Path(official_kwargs).read_text()
        kwargs = json.loads(text) if official_kwargs.endswith(".json") else __import__("yaml").safe_load(text)
    net = (from_official_lightningdit if model == "lightningdit" else from_official_reg)(ckpt, kwargs)
    return net.eval(), model, {"source": str(p), "kind": "official", "weights": "ema", "kwargs": kwargs}, {}


# ---------------------------------------------------------------------- chunks
def chunk_record_path(out: Path, k: int) -> Path:
    return out / "chunks" / f"chunk_{k:05d}.json"


def png_path(out: Path, index: int) -> Path:
    return out / "images" / f"{index:06d}.png"


def chunk_finished(out: Path, k: int, chunk_size: int, num_images: int) -> bool:
    if not chunk_record_path(out, k).is_file():
        return False
    end = min((k + 1) * chunk_size, num_images)
    return all(png_path(out, i).is_file() for i in range(k * chunk_size, end))


class ChunkBatches(Dataset):
    """Batch descriptors ``(chunk, first index, count)`` of the given chunks (each item is one batch)."""

    def __init__(self, chunks: list[int], chunk_size: int, batch_size: int, num_images: int):
        self.items = []
        for k in chunks:
            end = min((k + 1) * chunk_size, num_images)
            for start in range(k * chunk_size, end, batch_size):
                self.items.append((k, start, min(batch_size, end - start)))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, int, int]:
        return self.items[i]


class SampleDataModule(LightningDataModule):
    def __init__(self, out: Path, num_images: int, chunk_size: int, batch_size: int):
        super().__init__()
        self.out, self.num_images, self.chunk_size, self.batch_size = out, num_images, chunk_size, batch_size

    @property
    def num_chunks(self) -> int:
        return -(-self.num_images // self.chunk_size)

    def chunk_length(self, k: int) -> int:
        return min(self.chunk_size, self.num_images - k * self.chunk_size)

    def pending_chunks(self, rank: int, world: int) -> list[int]:
        return [
            k
            for k in range(rank, self.num_chunks, world)
            if not chunk_finished(self.out, k, self.chunk_size, self.num_images)
        ]

    def predict_dataloader(self) -> DataLoader:
        rank, world = self.trainer.global_rank, self.trainer.world_size
        chunks = self.pending_chunks(rank, world)
        log.info(
            "rank %d: %d chunks to sample (%d finished chunks kept)",
            rank,
            len(chunks),
            len(range(rank, self.num_chunks, world)) - len(chunks),
        )
        data = ChunkBatches(chunks, self.chunk_size, self.batch_size, self.num_images)
        return DataLoader(data, batch_size=None, shuffle=False)


# ---------------------------------------------------------------------- sampling
class SampleModule(LightningModule):
    """Network + decoder + statistics; ``predict_step((k, start, n))`` -> uint8 NHWC images."""

    def __init__(
        self, net, family: str, decoder, normalizer, config, label_mode: str, seed: int, num_classes: int = 1000
    ):
        super().__init__()
        self.net, self.decoder, self.normalizer = net, decoder, normalizer
        self.family, self.config, self.label_mode, self.seed = family, config, label_mode, seed
        self.num_classes = num_classes

    def predict_step(self, batch, batch_idx: int) -> dict[str, Any]:
        k, start, n = (int(v) for v in batch)
        seed = batch_seed(self.seed, start)
        g = torch.Generator(device=self.device).manual_seed(seed)
        labels = class_labels(
            self.label_mode, n, self.num_classes, offset=start, generator=torch.Generator().manual_seed(seed)
        ).to(self.device)
        latents = sample_latents(self.net, self.family, self.config, labels, generator=g)
        with torch.autocast(device_type=self.device.type, enabled=False):  # decode in fp32 (diffusion.md §3.5)
            images = signed_to_uint8(self.decoder.decode(self.normalizer.denormalize(latents.float())))
        return {
            "chunk": k,
            "start": start,
            "images": images.permute(0, 2, 3, 1).cpu().numpy(),
            "labels": labels.cpu().tolist(),
            "seed": seed,
        }


class SampleWriter(BasePredictionWriter):
    """Writes PNGs per batch and the chunk record once a chunk is complete; rank 0 packs the `.npz`."""

    def __init__(self, out: Path, provenance: dict[str, Any]):
        super().__init__(write_interval="batch")
        self.out, self.provenance = out, provenance
        self._pending: dict[int, list[dict[str, Any]]] = {}
        self.npz_path: Path | None = None

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        dm: SampleDataModule = trainer.datamodule
        k, start = prediction["chunk"], prediction["start"]
        for j, image in enumerate(prediction["images"]):
            Image.fromarray(np.ascontiguousarray(image)).save(png_path(self.out, start + j))
        rows = self._pending.setdefault(k, [])
        rows.append({"start": start, "labels": prediction["labels"], "seed": prediction["seed"]})
        if sum(len(r["labels"]) for r in rows) == dm.chunk_length(k):
            rows = sorted(self._pending.pop(k), key=lambda r: r["start"])
            record = {
                "chunk": k,
                "first": k * dm.chunk_size,
                "count": dm.chunk_length(k),
                "labels": [lab for r in rows for lab in r["labels"]],
                "batches": [{"start": r["start"], "seed": r["seed"]} for r in rows],
            }
            _write_json_atomic(chunk_record_path(self.out, k), record)

    def on_predict_end(self, trainer, pl_module) -> None:
        if self._pending:
            raise RuntimeError(f"sampling: chunks {sorted(self._pending)} did not receive all their images")
        trainer.strategy.barrier("sampling_done")
        if trainer.is_global_zero:
            dm: SampleDataModule = trainer.datamodule
            missing = [k for k in range(dm.num_chunks) if not chunk_finished(self.out, k, dm.chunk_size, dm.num_images)]
            if missing:
                raise RuntimeError(f"sampling: chunks {missing[:10]} are unfinished after the run; run again")
            self.npz_path = pack_npz(self.out, dm.num_images, dm.num_chunks, self.provenance)
        trainer.strategy.barrier("sampling_packed")


def _write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # one temp name per process (DDP ranks)
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def pack_npz(out: Path, num_images: int, num_chunks: int, provenance: dict[str, Any]) -> Path:
    """All PNGs in file-name order -> ``arr_0`` uint8 ``(N, H, W, 3)`` + labels + provenance (ADM layout).

    50,000 images at 256 px are 9.8 GB: the array is filled in a memory-mapped ``.npy`` on disk and
    streamed into the (uncompressed, as ``np.savez``) zip, so packing needs little RAM.
    """
    files = sorted((out / "images").glob("*.png"))[:num_images]
    if len(files) != num_images:
        raise RuntimeError(f"expected {num_images} PNGs in {out / 'images'}, found {len(files)}")
    first = np.asarray(Image.open(files[0]).convert("RGB"))
    work = out / ".pack"
    work.mkdir(exist_ok=True)
    arr = np.lib.format.open_memmap(work / "arr_0.npy", mode="w+", dtype=np.uint8, shape=(num_images, *first.shape))
    for i, f in enumerate(files):
        arr[i] = np.asarray(Image.open(f).convert("RGB"))
    shape = list(arr.shape)
    arr.flush()
    del arr
    labels = []
    for k in range(num_chunks):
        labels += json.loads(chunk_record_path(out, k).read_text())["labels"]
    record = {**provenance, "num_images": num_images, "npz_shape": shape}
    np.save(work / "labels.npy", np.asarray(labels, dtype=np.int64))
    np.save(work / "provenance.npy", np.asarray(json.dumps(to_jsonable(record))))
    path = out / f"samples_{num_images}x{shape[1]}x{shape[2]}x3.npz"
    tmp = path.with_name(path.stem + ".tmp.npz")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name in ("arr_0", "labels", "provenance"):
            zf.write(work / f"{name}.npy", arcname=f"{name}.npy")
    os.replace(tmp, path)
    shutil.rmtree(work)
    _write_json_atomic(path.with_suffix(".json"), to_jsonable(record))
    log.info("wrote %s %s", path, tuple(shape))
    return path


# ---------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="DiffusionModule .ckpt or official LightningDiT/REG .pt")
    ap.add_argument("--model", choices=("lightningdit", "reg"), help="network family of an official file")
    ap.add_argument("--official-kwargs", help="JSON/YAML constructor kwargs of an official file")
    ap.add_argument(
        "--weights", choices=("ema", "raw"), default="ema", help="training checkpoints: EMA or live weights"
    )
    ap.add_argument("--tokenizer", required=True, help="save_pretrained folder, official .pth, or 'none' (random)")
    ap.add_argument("--tokenizer-preset", default="vfmvae-f16d32-siglip2", help="preset of a random ('none') decoder")
    ap.add_argument("--tokenizer-kwargs", help="official generator kwargs (JSON/YAML) for an official .pth")
    ap.add_argument(
        "--allow-tokenizer-mismatch", action="store_true", help="decode with another tokenizer than the cache's"
    )
    ap.add_argument("--latent-stats", help="latents_stats.pt (default: the statistics recorded in the checkpoint)")
    ap.add_argument("--out", required=True, help="output folder (images/, chunks/, the .npz)")
    ap.add_argument("--num-images", type=int, default=50_000)
    ap.add_argument("--chunk-size", type=int, default=1_000)
    ap.add_argument("--batch-size", type=int, default=64, help="images per forward batch per process")
    ap.add_argument("--label-mode", choices=("random", "balanced"), default="random")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sampler", help="a vfmvae.transport.SAMPLER_PRESETS key (default: the family's paper sampler)")
    ap.add_argument("--cfg-scale", type=float, help="CFG scale (1 = no CFG; default: the preset's 4.0)")
    ap.add_argument("--num-steps", type=int, help="sampler grid points (default: the preset's 250)")
    ap.add_argument("--cfg-channels", default="preset", help="'preset', 'all' or a number (LightningDiT quirk: 3)")
    ap.add_argument("--accelerator", default="auto")
    ap.add_argument("--devices", default="auto")
    ap.add_argument("--num-nodes", type=int, default=1)
    ap.add_argument("--precision", default=None, help="trainer precision (default: bf16-mixed on GPU, 32 on CPU)")
    args = ap.parse_args(argv)
    if args.num_images < 1 or args.chunk_size < 1 or args.batch_size < 1:
        ap.error("--num-images, --chunk-size and --batch-size must be >= 1")
    return args


def main(argv: list[str] | None = None) -> Path | None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    net, family, net_record, train_prov = load_network(args.ckpt, args.model, args.weights, args.official_kwargs)
    tokenizer = None if args.tokenizer.lower() == "none" else args.tokenizer
    decoder = load_decoder(tokenizer, args.tokenizer_preset, args.tokenizer_kwargs)
    export_hash = (getattr(decoder, "export_record", None) or {}).get("weights_sha256")
    cache_hash = (train_prov.get("tokenizer") or {}).get("weights_sha256")
    if export_hash and cache_hash and export_hash != cache_hash and not args.allow_tokenizer_mismatch:
        raise ValueError(
            f"the network was trained on latents of tokenizer {cache_hash[:12]}, but --tokenizer is {export_hash[:12]}; "
            "decode with the same tokenizer (or pass --allow-tokenizer-mismatch)"
        )
    normalizer = load_latent_stats(args.latent_stats, train_prov.get("latent_stats"))
    if normalizer.num_channels != net.config.in_channels:
        raise ValueError(
            f"latent statistics have {normalizer.num_channels} channels, the network {net.config.in_channels}"
        )
    config = sampler_config(
        family, args.sampler, cfg_scale=args.cfg_scale, num_steps=args.num_steps, cfg_channels=args.cfg_channels
    )
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    provenance = {
        "num_images": args.num_images,
        "chunk_size": args.chunk_size,
        "seed": args.seed,
        "seed_rule": SEED_RULE,
        "label_mode": args.label_mode,
        "sampler": to_jsonable(config),
        "family": family,
        "network": net_record,
        "network_sha256": state_dict_sha256(net),
        "tokenizer": {
            "source": tokenizer,
            "preset": args.tokenizer_preset if tokenizer is None else None,
            "export_sha256": export_hash,  # the export's weights hash (as in the latent-cache manifest)
            "latent_cache_sha256": cache_hash,
        },
        "tokenizer_sha256": state_dict_sha256(decoder),
        "latent_stats": {"source": args.latent_stats or "checkpoint", **normalizer.stats_dict()},
        "training_provenance": train_prov,
    }
    _check_resume(out, to_jsonable(provenance))
    on_gpu = torch.cuda.is_available() and args.accelerator in ("auto", "gpu", "cuda")
    precision = args.precision or ("bf16-mixed" if on_gpu else "32-true")
    devices = args.devices if args.devices == "auto" else int(args.devices)
    writer = SampleWriter(out, provenance)
    trainer = Trainer(
        accelerator=args.accelerator,
        devices=devices,
        num_nodes=args.num_nodes,
        precision=precision,
        logger=False,
        callbacks=[writer],
        use_distributed_sampler=False,
        enable_model_summary=False,
        inference_mode=True,
    )
    module = SampleModule(
        net, family, decoder, normalizer, config, args.label_mode, args.seed, num_classes=net.config.num_classes
    )
    dm = SampleDataModule(out, args.num_images, args.chunk_size, args.batch_size)
    trainer.predict(module, datamodule=dm, return_predictions=False)
    return writer.npz_path


def _check_resume(out: Path, provenance: dict[str, Any]) -> None:
    """A resumed run must use the same settings, or its chunks would mix two experiments."""
    path = out / "sampling.json"
    if path.is_file():
        old = json.loads(path.read_text())
        changed = [k for k in RESUME_KEYS if old.get(k) != provenance.get(k)]
        if changed:
            raise ValueError(
                f"{out} holds samples made with other settings ({', '.join(changed)}); use a new --out "
                "or the same settings to resume"
            )
    else:
        _write_json_atomic(path, provenance)


if __name__ == "__main__":
    main()
