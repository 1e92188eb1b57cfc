"""``ImageNetDataModule``: one DataModule for the tokenizer and diffusion trainings.

Two independent choices (kept apart so a "latents" mode can be added without touching the sources):
- ``source``: where records come from - an ImageFolder tree (``imagefolder.py``; map-style, sharded by
  ``ResumableDistributedSampler``) or ``timm/imagenet-1k-wds`` tar shards (``webdataset_shards.py``;
  iterable, split by rank and worker);
- ``mode``: what a record becomes - ``"images"`` (``image_mode.py``: decode + one of the crops of
  docs/design.md, "Crops and resizing") or ``"latents"`` (``latent_dataset.py``: cached tokenizer latents written by
  ``vfmvae cache-latents``, random access, normalised, with the LightningDiT or REG sampling policy).

Batch (images mode): ``{"image": uint8 (B, 3, R, R), "label": int64 (B,), "key": list[str]}``.
Batch (latents mode): ``{"latent": float32 (B, C, h, w) normalised, "label": int64 (B,), "key": list[str],
"index": int64 (B,), "flipped": bool (B,), ["image": uint8 (B, 3, R, R)]}``; ``latent_shape`` and
``num_classes`` are exposed for LightningCLI argument linking.
Models convert to float themselves (docs/design.md, "Value ranges and pixel conversion"). Paper settings:
docs/design.md, "Tokenizer stages and losses" (data), "Evaluation protocol" (rFID crop), "Crops and resizing"
(ADM crop for latent caching).

Distributed use: with the ImageFolder source the DataModule shards the data itself, so the Trainer
must run with ``use_distributed_sampler=False`` (checked). With WebDataset shards every reader gets a
disjoint part; a finite (validation) stream may give ranks different numbers of batches.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch.utils.data import default_collate

from datamodules.decoding import BadImageTracker
from datamodules.demo_data import DemoDataConfig, write_demo_imagefolder
from datamodules.image_mode import EpochDataLoader, ImageTransform, MappedImages, StreamedImages, collate_images
from datamodules.imagefolder import ImageFolderSource, find_classes
from datamodules.key_filter import load_key_list
from datamodules.latent_dataset import LatentDataset, latent_split
from datamodules.samplers import ResumableDistributedSampler
from datamodules.webdataset_shards import WebDatasetSource, list_shards

log = logging.getLogger(__name__)

MODES = ("images", "latents")
SOURCES = ("imagefolder", "webdataset")


@dataclass
class ImageNetDataConfig:
    """Data settings; presets in :data:`DATA_PRESETS`.

    Paths: ImageFolder splits are ``root/<split>/<class>/<image>``; WebDataset splits are the shards
    under ``root`` matching ``wds_pattern`` with ``{split}`` filled in (``timm/imagenet-1k-wds``:
    splits ``train`` and ``validation``).
    """

    mode: str = "images"
    source: str = "imagefolder"
    root: str = "data/imagenet"
    train_split: str = "train"
    val_split: str | None = "val"
    wds_pattern: str = "*-{split}-*.tar"
    resolution: int = 256
    train_crop: str = "tokenizer_train"
    val_crop: str = "resize_center"
    # Key list of images to keep (short side >= 256 px in the paper); applied to train only unless
    # filter_val (the paper's rFID uses all 50k validation images).
    filter_keys_path: str | None = None
    filter_val: bool = False
    batch_size: int = 32  # per device
    val_batch_size: int | None = None
    num_workers: int = 4
    persistent_workers: bool = False
    pin_memory: bool = True  # only takes effect when CUDA is available
    shuffle_train: bool = True
    drop_last_train: bool = True
    seed: int = 0
    shuffle_buffer: int = 5000  # WebDataset sample shuffle buffer per reader (official: 50,000)
    infinite_train: bool = True  # WebDataset: cycle the train stream (official: resampled shards)
    max_bad_fraction: float = 0.001
    min_seen_for_bad_check: int = 1000
    # When set, prepare_data() writes the embedded demo dataset as ImageFolder splits under root.
    demo: DemoDataConfig | None = None
    # Latents mode (diffusion training): cache folders written by vfmvae cache-latents.
    latent_root: str | None = None
    latent_val_root: str | None = None
    latent_policy: str = "lightningdit"  # "lightningdit": fixed sample, flip p=0.5; "reg": fresh sample, no flip
    latent_stats_path: str | None = None  # default: <latent_root>/latents_stats.pt
    return_images: bool = False  # also yield the cached uint8 crops (REG's DINOv2 targets)
    expected_latent_shape: tuple[int, int, int] | None = None
    expected_tokenizer_hash: str | None = None
    latent_verify: bool = False  # check every shard's sha256 and values against the manifest (reads the whole cache)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown data mode {self.mode!r}; available: {MODES}")
        if self.mode == "latents" and not self.latent_root:
            raise ValueError("data mode 'latents' needs latent_root (a cache folder from vfmvae cache-latents)")
        if self.source not in SOURCES:
            raise ValueError(f"unknown data source {self.source!r}; choose one of {SOURCES}")
        if self.resolution < 1 or self.batch_size < 1 or self.num_workers < 0:
            raise ValueError("resolution and batch_size must be >= 1 and num_workers >= 0")
        if self.demo is not None and self.source != "imagefolder":
            raise ValueError("the demo dataset is written as an ImageFolder tree: use source='imagefolder'")
        if isinstance(self.demo, dict):  # from YAML
            self.demo = DemoDataConfig(**self.demo)


DATA_PRESETS: dict[str, ImageNetDataConfig] = {
    # Tokenizer training: >= 256 px filter, random-scale crop; rFID crop for val.
    "imagenet-tokenizer": ImageNetDataConfig(filter_keys_path="data/imagenet_train_hr_256.txt"),
    "imagenet-tokenizer-wds": ImageNetDataConfig(
        source="webdataset",
        root="data/imagenet-1k-wds",
        val_split="validation",
        filter_keys_path="data/imagenet_train_hr_256.txt",
    ),
    # Latent caching and generation reference images: ADM crop, fixed order.
    "imagenet-adm": ImageNetDataConfig(
        train_crop="adm_center", val_crop="adm_center", shuffle_train=False, drop_last_train=False
    ),
    "imagenet-adm-wds": ImageNetDataConfig(
        source="webdataset",
        root="data/imagenet-1k-wds",
        val_split="validation",
        train_crop="adm_center",
        val_crop="adm_center",
        shuffle_train=False,
        drop_last_train=False,
        infinite_train=False,
    ),
    # Embedded photographs, written once as an ImageFolder tree (docs/demo_data.md).
    "demo": ImageNetDataConfig(
        root="outputs/demo_data",
        resolution=64,
        batch_size=8,
        num_workers=2,
        pin_memory=False,
        min_seen_for_bad_check=50,
        demo=DemoDataConfig(resolution=128, num_per_class=16),
    ),
    "debug": ImageNetDataConfig(
        root="outputs/demo_data_debug",
        resolution=32,
        batch_size=4,
        num_workers=0,
        pin_memory=False,
        min_seen_for_bad_check=20,
        demo=DemoDataConfig(resolution=48, num_per_class=2),
    ),
}


def data_preset(name: str, **overrides: Any) -> ImageNetDataConfig:
    """A copy of preset ``name`` with ``overrides`` applied."""
    if name not in DATA_PRESETS:
        raise ValueError(f"unknown data preset {name!r}; choose one of {sorted(DATA_PRESETS)}")
    return replace(DATA_PRESETS[name], **overrides)


@dataclass
class _Split:
    dataset: Any
    sampler: ResumableDistributedSampler | None = None
    classes: list[str] = field(default_factory=list)


class ImageNetDataModule(L.LightningDataModule):
    """ImageNet (or demo) data for both trainings; see the module docstring for layout and batches."""

    def __init__(self, config: ImageNetDataConfig | None = None):
        super().__init__()
        self.config = config if config is not None else ImageNetDataConfig()
        self.save_hyperparameters({"config": asdict(self.config)})
        # Main-process view of the bad-image budget (workers keep their own; see decoding.py).
        self.bad_images = BadImageTracker(self.config.max_bad_fraction, self.config.min_seen_for_bad_check)
        self._splits: dict[str, _Split] = {}
        self._train_loader: EpochDataLoader | None = None
        self._pending_state: dict[str, Any] = {}

    @classmethod
    def fromImageNetDataConfig(cls, name: str, **overrides: Any) -> ImageNetDataModule:
        return cls(data_preset(name, **overrides))

    # ------------------------------------------------------------------ paths
    def split_path(self, split: str) -> Path:
        return Path(self.config.root) / split

    def prepare_data(self) -> None:
        """Writes the demo tree when ``config.demo`` is set (runs on one process per node)."""
        cfg = self.config
        if cfg.demo is None:
            return
        write_demo_imagefolder(self.split_path(cfg.train_split), cfg.demo)
        if cfg.val_split is not None:
            # A different seed, so validation crops are not training crops.
            write_demo_imagefolder(self.split_path(cfg.val_split), replace(cfg.demo, seed=cfg.demo.seed + 1_000_003))

    # ------------------------------------------------------------------ build
    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _source(self, split: str, train: bool) -> ImageFolderSource | WebDatasetSource:
        """The record reader of ``split`` (mode-independent: a latents mode reuses nothing below it)."""
        cfg = self.config
        keep = None
        if cfg.filter_keys_path is not None and (train or cfg.filter_val):
            keep = load_key_list(cfg.filter_keys_path)
        if cfg.source == "imagefolder":
            # Other splits use the train split's class list (when present) so that ids agree even
            # if a class folder is missing from them.
            train_path = self.split_path(cfg.train_split)
            classes = find_classes(train_path) if not train and train_path.is_dir() else None
            return ImageFolderSource(self.split_path(split), keep_keys=keep, classes=classes)
        rank, world = self._rank_world()
        return WebDatasetSource(
            list_shards(cfg.root, split, cfg.wds_pattern),
            keep_keys=keep,
            shuffle=train and cfg.shuffle_train,
            shuffle_buffer=cfg.shuffle_buffer,
            seed=cfg.seed,
            infinite=train and cfg.infinite_train,
            rank=rank,
            world_size=world,
        )

    def _build_latents(self, train: bool) -> _Split | None:
        """Latents mode: the cache folder's `LatentDataset` and the rank's resumable sampler."""
        cfg = self.config
        dataset = latent_split(cfg, train)
        if dataset is None:
            return None
        rank, world = self._rank_world()
        sampler = ResumableDistributedSampler(
            dataset,
            num_replicas=world,
            rank=rank,
            shuffle=train and cfg.shuffle_train,
            seed=cfg.seed,
            drop_last=train and cfg.drop_last_train,
        )
        return _Split(dataset, sampler)

    def _build(self, split: str, train: bool) -> _Split:
        """Source + mode -> dataset (and, for map-style sources, the rank's sampler)."""
        cfg = self.config
        if cfg.mode == "latents":
            return self._build_latents(train)
        source = self._source(split, train)
        # Mode "images" (the only one so far): decode + named crop.
        tracker = BadImageTracker(cfg.max_bad_fraction, cfg.min_seen_for_bad_check)
        transform = ImageTransform(cfg.train_crop if train else cfg.val_crop, cfg.resolution, cfg.seed)
        if isinstance(source, WebDatasetSource):
            return _Split(StreamedImages(source, transform, tracker))
        rank, world = self._rank_world()
        sampler = ResumableDistributedSampler(
            source,
            num_replicas=world,
            rank=rank,
            shuffle=train and cfg.shuffle_train,
            seed=cfg.seed,
            drop_last=train and cfg.drop_last_train,
        )
        return _Split(MappedImages(source, transform, tracker), sampler, source.classes)

    def setup(self, stage: str | None = None) -> None:
        cfg = self.config
        if stage in (None, "fit") and "train" not in self._splits:
            self._splits["train"] = self._build(cfg.train_split, train=True)
        if stage in (None, "fit", "validate", "test", "predict") and cfg.val_split is not None:
            if "val" not in self._splits:
                val = self._build(cfg.val_split, train=False)
                if val is not None:  # latents mode without a held-out cache
                    self._splits["val"] = val

    # ------------------------------------------------------------------ loaders
    def _check_trainer_sampler(self) -> None:
        trainer = self.trainer
        if trainer is None or self.config.source != "imagefolder" or trainer.world_size == 1:
            return
        if getattr(trainer._accelerator_connector, "use_distributed_sampler", False):
            raise RuntimeError(
                "ImageNetDataModule shards ImageFolder data with its own ResumableDistributedSampler; "
                "run the Trainer with use_distributed_sampler=False (trainer.use_distributed_sampler: false)"
            )

    def _loader(self, split: _Split, batch_size: int, train: bool, start_epoch: int = 0) -> EpochDataLoader:
        cfg = self.config
        workers = cfg.num_workers
        return EpochDataLoader(
            split.dataset,
            batch_size=batch_size,
            sampler=split.sampler,
            num_workers=workers,
            collate_fn=default_collate if cfg.mode == "latents" else collate_images,
            drop_last=train and cfg.drop_last_train,
            pin_memory=cfg.pin_memory and torch.cuda.is_available(),
            persistent_workers=cfg.persistent_workers and workers > 0,
            start_epoch=start_epoch,
        )

    def _split(self, name: str) -> _Split:
        if name not in self._splits:
            self.setup("fit" if name == "train" else "validate")
        if name not in self._splits:
            raise RuntimeError(f"no {name} split configured (val_split is None)")
        return self._splits[name]

    def train_dataloader(self) -> EpochDataLoader:
        self._check_trainer_sampler()
        start = int(self._pending_state.pop("train_epoch", 0))
        self._train_loader = self._loader(self._split("train"), self.config.batch_size, True, start)
        return self._train_loader

    def val_dataloader(self) -> EpochDataLoader:
        self._check_trainer_sampler()
        return self._loader(self._split("val"), self.config.val_batch_size or self.config.batch_size, False)

    def test_dataloader(self) -> EpochDataLoader:
        return self.val_dataloader()

    # ------------------------------------------------------------------ batches and state
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Drops ``skipped`` from the batch and charges it to the main-process bad-image budget."""
        if isinstance(batch, dict) and "skipped" in batch:
            skipped = batch.pop("skipped")
            self.bad_images.ok(len(batch["key"]))
            for key in skipped:
                self.bad_images.bad(key, "could not be decoded (logged by its worker)", log_it=False)
        return batch

    @property
    def train_sampler(self) -> ResumableDistributedSampler | None:
        """The train sampler (ImageFolder source), for callbacks that record its position."""
        split = self._splits.get("train")
        return split.sampler if split is not None else None

    def _latent_train(self) -> LatentDataset:
        if self.config.mode != "latents":
            raise AttributeError("latent_shape / num_classes exist in the latents mode only")
        return self._split("train").dataset

    @property
    def latent_dataset(self) -> LatentDataset:
        """The train split's `LatentDataset` (manifest, normaliser) in the latents mode."""
        return self._latent_train()

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """`(C, h, w)` of the cached latents (link it to the model's input shape)."""
        return self._latent_train().latent_shape

    @property
    def num_classes(self) -> int:
        """Number of classes recorded in the cache manifest."""
        return self._latent_train().num_classes

    @property
    def classes(self) -> list[str]:
        """Class names in id order (ImageFolder source; empty for WebDataset, whose ids are in the shards)."""
        return self._split("train").classes

    def state_dict(self) -> dict[str, Any]:
        """Bad-image counts and the WebDataset epoch counter. The ImageFolder sampler's epoch and
        position are checkpointed by ``callbacks/sampler_state.py`` (it knows how many batches trained)."""
        state: dict[str, Any] = {
            "bad_images": {"num_seen": self.bad_images.num_seen, "num_bad": self.bad_images.num_bad}
        }
        if self._train_loader is not None and self.train_sampler is None:
            # WebDataset: a resumed run starts the next unused stream epoch (new shard/sample order),
            # so it does not re-train the stream from its beginning; it is not an exact mid-stream resume.
            state["train_epoch"] = self._train_loader.next_epoch
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        counts = state_dict.get("bad_images", {})
        self.bad_images.num_seen = int(counts.get("num_seen", 0))
        self.bad_images.num_bad = int(counts.get("num_bad", 0))
        if "train_epoch" in state_dict:
            self._pending_state["train_epoch"] = int(state_dict["train_epoch"])

    def teardown(self, stage: str | None = None) -> None:
        if self.bad_images.num_bad:
            log.warning("ImageNetDataModule: %s", self.bad_images.summary())
