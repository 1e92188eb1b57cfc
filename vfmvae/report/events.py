"""Reading a run's TensorBoard event files: every scalar, and the newest image of every image tag.

Each event file is read on its own (``EventAccumulator`` on the file, so its restarts are purged inside
the file) and the files are merged in writing order with the resume rule of :mod:`vfmvae.report.scalars`.
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from vfmvae.report.scalars import Series, merge_pieces

__all__ = ["EVENT_GLOB", "LoggedImage", "event_files", "read_event_files"]

log = logging.getLogger(__name__)

EVENT_GLOB = "events.out.tfevents.*"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class LoggedImage:
    """The newest image of one tag: ``png`` bytes (always PNG), the step and wall time it was logged at, its size."""

    tag: str
    step: int
    png: bytes
    width: int
    height: int
    wall_time: float = 0.0


def event_files(folder: Path) -> list[Path]:
    """The event files directly in ``folder``, in writing order (the creation time in the name, then the name)."""

    def key(path: Path) -> tuple[int, list]:
        parts = path.name.split(".")  # events.out.tfevents.<unix time>.<host>.<pid>.<n>[suffix]
        stamp = int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else int(path.stat().st_mtime)
        # natural order inside one second: writer counter 10 after 9
        natural = [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", path.name) if t]
        return stamp, natural

    return sorted((p for p in Path(folder).glob(EVENT_GLOB) if p.is_file()), key=key)


def _accumulator(path: Path):
    from tensorboard.backend.event_processing import event_accumulator as ea

    # 0 = keep every scalar (the default keeps a 10 000-point sample); images: the reservoir always keeps the
    # newest item, so 1 is the latest image per tag without holding every grid of a long run in memory.
    guidance = {
        ea.SCALARS: 0,
        ea.IMAGES: 1,
        ea.AUDIO: 1,
        ea.HISTOGRAMS: 1,
        ea.COMPRESSED_HISTOGRAMS: 1,
        ea.TENSORS: 1,
    }
    acc = ea.EventAccumulator(str(path), size_guidance=guidance)
    acc.Reload()
    return acc


def _as_png(data: bytes) -> bytes | None:
    """Image bytes as PNG (TensorBoard stores PNG; anything else PIL can read is converted), None if unreadable."""
    if data.startswith(_PNG_MAGIC):
        return data
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="PNG")
            return buffer.getvalue()
    except Exception as err:  # noqa: BLE001 - a broken image must not stop the report
        log.warning("skipping an image that is neither PNG nor readable by PIL (%s)", err)
        return None


def read_event_files(files: list[Path]) -> tuple[dict[str, Series], dict[str, LoggedImage]]:
    """``({tag: Series}, {tag: newest LoggedImage})`` from the event files of one run (oldest file first).

    A corrupt or truncated file (a run killed mid-write) contributes what could be read and a warning.
    """
    pieces: list[dict[str, Series]] = []
    images: dict[str, LoggedImage] = {}
    for path in files:
        try:
            acc = _accumulator(path)
        except Exception as err:  # noqa: BLE001 - one unreadable file must not hide the others
            log.warning("could not read %s (%s); the report omits it", path, err)
            continue
        tags = acc.Tags()
        pieces.append(
            {
                tag: Series.from_points((e.step, e.value, e.wall_time) for e in acc.Scalars(tag))
                for tag in tags.get("scalars", [])
            }
        )
        for tag in tags.get("images", []):
            events = acc.Images(tag)
            if not events:
                continue
            newest = events[-1]
            png = _as_png(newest.encoded_image_string)
            # the newest by wall time: after a resume from an earlier checkpoint, a later file's image at a
            # smaller step replaces the orphaned one of the earlier process
            if png is not None and (tag not in images or newest.wall_time >= images[tag].wall_time):
                images[tag] = LoggedImage(
                    tag, int(newest.step), png, int(newest.width), int(newest.height), float(newest.wall_time)
                )
    return merge_pieces(pieces), dict(sorted(images.items()))
