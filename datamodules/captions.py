"""Image-caption sources and caption cleaning (docs/text_to_image.md, "Data").

Two layouts, both giving records ``(key, image data, caption)``:

* **caption folder**: an ImageFolder-like tree ``root/<group>/<key>.<ext>`` (group folders as in
  ImageFolder; their names are not used) with ``root/captions.jsonl``, one JSON object per line:
  ``{"key": "<file stem>", "caption": "..."}`` (``"file": "<relative path>"`` may replace ``"key"``;
  ``"text"`` or ``"prompt"`` may replace ``"caption"``). Keys are file stems, unique, as in
  `datamodules.imagefolder` (the latent cache keys its latents the same way).
* **WebDataset** shards: samples ``<key>.jpg|png|webp`` with ``<key>.txt`` (the caption) or
  ``<key>.json`` (an object with ``caption``/``text``/``prompt``).

Captions are cleaned by :func:`clean_caption` (HTML entities and tags, URLs, control characters,
repeated whitespace). What happens to a sample whose caption is missing or empty after cleaning is the
``empty_caption`` policy: ``"skip"`` (leave it out, counted and logged), ``"null"`` (keep it with the
empty prompt, which trains the unconditional branch like null-prompt dropout), ``"error"`` (stop,
naming the key).
"""

from __future__ import annotations

import html
import json
import logging
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from datamodules.imagefolder import ImageFolderSource
from datamodules.webdataset_shards import IMAGE_FIELDS, iter_tar_samples

log = logging.getLogger(__name__)

__all__ = [
    "CAPTIONS_FILE",
    "EMPTY_CAPTION_POLICIES",
    "CaptionRecord",
    "CaptionFolderSource",
    "clean_caption",
    "iter_caption_shards",
    "read_captions_jsonl",
]

CAPTIONS_FILE = "captions.jsonl"
EMPTY_CAPTION_POLICIES = ("skip", "null", "error")
CAPTION_FIELDS = ("caption", "text", "prompt")

_TAG = re.compile(r"<[^>]{0,200}>")
_URL = re.compile(r"(https?://|www\.)\S+", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\ufeff]")
_SPACE = re.compile(r"\s+")


def clean_caption(text: Any) -> str:
    """A caption as one tidy line: ``None``/non-strings -> ``""``; HTML entities decoded, tags, URLs and
    control/zero-width characters removed, whitespace collapsed, surrounding quotes and spaces stripped."""
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if not isinstance(text, str):
        return ""
    text = html.unescape(html.unescape(text))  # doubly escaped captions are common in web crawls
    text = _CONTROL.sub("", _URL.sub(" ", _TAG.sub(" ", text)))
    return _SPACE.sub(" ", text).strip().strip("\"'").strip()


def _caption_of(obj: Mapping[str, Any]) -> Any:
    for name in CAPTION_FIELDS:
        if name in obj:
            return obj[name]
    return None


def read_captions_jsonl(path: str | Path) -> dict[str, str]:
    """``{key: raw caption}`` of a ``captions.jsonl`` (see the module docstring); bad lines are errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {CAPTIONS_FILE} at {path} (one JSON object per line: key, caption)")
    out: dict[str, str] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({err.msg}); one object per line") from None
            if not isinstance(obj, dict) or not ("key" in obj or "file" in obj):
                raise ValueError(f'{path}:{lineno}: expected an object with "key" (or "file") and "caption"')
            key = str(obj["key"]) if "key" in obj else Path(str(obj["file"])).stem
            if key in out:
                raise ValueError(f"{path}:{lineno}: a second caption for key {key!r} (one line per image)")
            out[key] = _caption_of(obj)
    return out


def apply_policy(key: str, raw: Any, policy: str, counts: dict[str, int]) -> str | None:
    """The cleaned caption, or ``None`` when the sample is to be skipped (see the module docstring)."""
    if policy not in EMPTY_CAPTION_POLICIES:
        raise ValueError(f"unknown empty_caption policy {policy!r}; choose one of {EMPTY_CAPTION_POLICIES}")
    caption = clean_caption(raw)
    if caption:
        return caption
    counts["empty"] = counts.get("empty", 0) + 1
    if policy == "error":
        raise ValueError(f"sample {key!r} has no usable caption (raw: {raw!r}); set empty_caption: skip or null")
    return None if policy == "skip" else ""


class CaptionRecord(tuple):
    """``(key, data, caption)``: ``data`` a file path (folder) or encoded bytes (WebDataset)."""

    __slots__ = ()

    def __new__(cls, key: str, data: str | bytes, caption: str):
        return super().__new__(cls, (key, data, caption))

    key = property(lambda self: self[0])
    data = property(lambda self: self[1])
    caption = property(lambda self: self[2])


class CaptionFolderSource:
    """Map-style records of a caption folder (see the module docstring), in the ImageFolder's sorted order.

    Images without a ``captions.jsonl`` entry count as empty captions; entries without an image are
    logged. ``skipped`` lists the keys the ``empty_caption`` policy left out.
    """

    def __init__(self, root: str | Path, empty_caption: str = "skip") -> None:
        self.root = Path(root)
        images = ImageFolderSource(self.root)
        raw = read_captions_jsonl(self.root / CAPTIONS_FILE)
        counts: dict[str, int] = {}
        self.records: list[CaptionRecord] = []
        self.skipped: list[str] = []
        seen = set()
        for i in range(len(images)):
            record = images[i]
            seen.add(record.key)
            caption = apply_policy(record.key, raw.get(record.key), empty_caption, counts)
            if caption is None:
                self.skipped.append(record.key)
            else:
                self.records.append(CaptionRecord(record.key, record.data, caption))
        orphans = len(set(raw) - seen)
        if orphans:
            log.warning("%s: %d captions name no image of the folder", self.root / CAPTIONS_FILE, orphans)
        if self.skipped:
            log.warning("%s: %d images without a usable caption skipped", self.root, len(self.skipped))
        if not self.records:
            raise ValueError(f"{self.root}: no image has a usable caption ({len(images)} images)")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> CaptionRecord:
        return self.records[index]

    def captions(self) -> dict[str, str]:
        return {r.key: r.caption for r in self.records}


def iter_caption_shards(shards: list[str], empty_caption: str = "skip") -> Iterator[CaptionRecord]:
    """Records of WebDataset shards with ``txt`` or ``json`` captions, in shard order (see the module docstring)."""
    counts: dict[str, int] = {}
    for shard in shards:
        for sample in iter_tar_samples(shard):
            key = sample["__key__"]
            field = next((f for f in IMAGE_FIELDS if f in sample), None)
            if field is None:
                log.warning("%s: sample %r has no image (%s); skipped", shard, key, "/".join(IMAGE_FIELDS))
                continue
            raw: Any = None
            if "txt" in sample:
                raw = sample["txt"]
            elif "json" in sample:
                try:
                    obj = json.loads(sample["json"])
                except (json.JSONDecodeError, UnicodeDecodeError):
                    obj = None
                raw = _caption_of(obj) if isinstance(obj, dict) else None
            caption = apply_policy(key, raw, empty_caption, counts)
            if caption is not None:
                yield CaptionRecord(key, sample[field], caption)
    if counts.get("empty"):
        log.warning("%d WebDataset samples had no usable caption (policy %r)", counts["empty"], empty_caption)
