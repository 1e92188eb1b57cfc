"""Image batches with the condition of a conditional tokenizer decoder (docs/conditional.md).

``ConditionalImageDataModule`` is ``ImageNetDataModule`` (images mode) whose batches also carry what the
decoder is conditioned on, looked up in the main process per batch:

| ``condition`` | adds to the batch | from | decoder ``label_type`` |
|---|---|---|---|
| ``class_ids`` | nothing (``label`` is already there) | the sorted class folders | ``cls2id`` |
| ``class_names`` | ``"class_name": list[str]`` | ``class_names_path``: one name per line (line i = class id i), a JSON list, or the official ``{"<id>": text}`` JSON | ``cls2text`` |
| ``captions`` | ``"caption": list[str]`` | ``captions.jsonl`` in each split folder, the text-to-image format (`datamodules.captions.read_captions_jsonl`): one ``{"key": <file stem>, "caption": <text>}`` per line (``"file"`` may replace ``"key"``, ``"text"``/``"prompt"`` may replace ``"caption"``) | ``text`` |

Captions are cleaned as for text-to-image (`datamodules.captions.clean_caption`). A caption is found by the
image's key (its file stem, unique in an ImageFolder split) in the table of the split being read (validation
batches: the val split's), so every image of a split needs exactly one caption: a missing or duplicated one is
an error at setup, naming the file. A caption empty after cleaning is an error (``empty_caption: error``) or
the empty prompt (``null``); the tokenizer's image batches cannot leave images out (``skip``).
Captions need the ImageFolder source (a WebDataset shard would carry its own ``txt``, not read here).

With the embedded demo photographs (``config.demo``), ``prepare_data`` also writes the conditions: a caption
``"a photo of a <class name>"`` per image, the class names file (when ``class_names_path`` does not exist yet)
and, when ``demo_tokenizer_dir`` is set, a word-level tokenizer over those words for the tiny text tower
(`vfmvae.vfm.siglip2_text.write_word_level_tokenizer`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from datamodules.captions import apply_policy, read_captions_jsonl
from datamodules.imagefolder import IMAGE_EXTENSIONS, ImageFolderSource
from datamodules.imagenet import ImageNetDataConfig, ImageNetDataModule

CONDITIONS = ("class_ids", "class_names", "captions")


def load_class_names(path: str | Path) -> list[str]:
    """Class names in id order from a text file (one per line), a JSON list or a JSON ``{"<id>": name}`` object."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class names file {path} does not exist (one class name per line, id order)")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        if isinstance(data, dict):
            ids = sorted(int(k) for k in data)
            if ids != list(range(len(ids))):
                raise ValueError(f"{path}: class ids must be 0..{len(ids) - 1} without gaps")
            return [str(data[str(i)]) for i in ids]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of names or an object {{'<id>': name}}")
        return [str(n) for n in data]
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_captions(path: str | Path, empty_caption: str = "error") -> dict[str, str]:
    """``{image key: cleaned caption}`` of a ``captions.jsonl``: the text-to-image reader
    (`datamodules.captions.read_captions_jsonl`, one format for both) and its cleaning and ``empty_caption``
    policy (``error`` or ``null``)."""
    if empty_caption == "skip":
        raise ValueError("empty_caption 'skip' would leave images out of the tokenizer's batches: use error or null")
    counts: dict[str, int] = {}
    return {key: apply_policy(key, raw, empty_caption, counts) for key, raw in read_captions_jsonl(path).items()}


def demo_caption(class_name: str) -> str:
    return f"a photo of a {class_name.replace('_', ' ')}"


def _images(split: Path) -> list[Path]:
    return sorted(p for p in split.glob("*/*") if p.suffix.lower() in IMAGE_EXTENSIONS)


class ConditionalImageDataModule(ImageNetDataModule):
    """``ImageNetDataModule`` whose batches carry class names or captions (see the module docstring).

    Args:
        config: the ``ImageNetDataConfig`` (images mode).
        condition: ``class_ids``, ``class_names`` or ``captions``.
        class_names_path: the class names file (``class_names``).
        captions_file: the captions file name inside each split folder (``captions``).
        empty_caption: a caption empty after cleaning is an ``error`` or the empty prompt (``null``).
        demo_tokenizer_dir: demo data only: write a word-level tokenizer of the demo captions here.
    """

    def __init__(
        self,
        config: ImageNetDataConfig | None = None,
        condition: str = "class_ids",
        class_names_path: str | None = None,
        captions_file: str = "captions.jsonl",
        demo_tokenizer_dir: str | None = None,
        empty_caption: str = "error",
    ):
        super().__init__(config)
        if condition not in CONDITIONS:
            raise ValueError(f"unknown condition {condition!r}; choose one of {CONDITIONS}")
        if self.config.mode != "images":
            raise ValueError("ConditionalImageDataModule conditions image batches: use mode 'images'")
        if condition == "class_names" and not class_names_path:
            raise ValueError("condition 'class_names' needs class_names_path (one class name per line, in id order)")
        if condition == "captions" and self.config.source != "imagefolder":
            raise ValueError(
                "condition 'captions' reads captions.jsonl beside ImageFolder splits: use source imagefolder"
            )
        self.condition, self.class_names_path, self.captions_file = condition, class_names_path, captions_file
        self.demo_tokenizer_dir = demo_tokenizer_dir
        if empty_caption not in ("error", "null"):
            raise ValueError(f"empty_caption must be 'error' or 'null' for tokenizer batches, got {empty_caption!r}")
        self.empty_caption = empty_caption
        self.class_names: list[str] | None = None
        self.captions: dict[str, dict[str, str]] = {}  # split ("train" / "val") -> {image key: caption}

    def prepare_data(self) -> None:
        super().prepare_data()
        if self.config.demo is None:
            return
        splits = [self.split_path(s) for s in (self.config.train_split, self.config.val_split) if s is not None]
        texts = []
        for split in splits:
            rows = [{"key": p.stem, "caption": demo_caption(p.parent.name)} for p in _images(split)]
            (split / self.captions_file).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
            texts += [r["caption"] for r in rows]
        classes = sorted(p.name for p in splits[0].iterdir() if p.is_dir())
        if self.class_names_path and not Path(self.class_names_path).exists():
            Path(self.class_names_path).write_text("".join(c.replace("_", " ") + "\n" for c in classes))
        if self.demo_tokenizer_dir:
            from vfmvae.vfm.siglip2_text import write_word_level_tokenizer

            write_word_level_tokenizer(self.demo_tokenizer_dir, texts + [c.replace("_", " ") for c in classes])

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.condition == "class_names" and self.class_names is None:
            self.class_names = load_class_names(self.class_names_path)
        for name, split in self._splits.items():
            source = getattr(split.dataset, "source", None)
            if isinstance(source, ImageFolderSource):
                self._check_split(name, source)

    def _check_split(self, name: str, source: ImageFolderSource) -> None:
        if self.condition == "class_names" and len(self.class_names) < len(source.classes):
            raise ValueError(
                f"{self.class_names_path} names {len(self.class_names)} classes, but {source.root} has "
                f"{len(source.classes)} class folders"
            )
        if self.condition == "captions":
            table = load_captions(source.root / self.captions_file, self.empty_caption)
            missing = [k for k in source.keys if k not in table]
            if missing:
                raise ValueError(
                    f"{source.root / self.captions_file} has no caption for {len(missing)} image(s) of the {name} "
                    f"split, e.g. {missing[:3]}"
                )
            self.captions[name] = table

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        batch = super().on_before_batch_transfer(batch, dataloader_idx)
        if self.condition == "class_names":
            batch["class_name"] = [self.class_names[int(i)] for i in batch["label"]]
        elif self.condition == "captions":
            trainer = self.trainer
            split = "val" if trainer is not None and not trainer.training and "val" in self.captions else "train"
            table = self.captions.get(split) or next(iter(self.captions.values()))
            batch["caption"] = [table[k] for k in batch["key"]]
        return batch


__all__ = ["CONDITIONS", "ConditionalImageDataModule", "load_captions", "load_class_names"]
