"""Read back what a run logged to TensorBoard (the demo's REG phase: final losses, the probe's heat-map)."""

from __future__ import annotations

from pathlib import Path


def _events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def last_scalars(run_dir: Path, prefix: str) -> dict[str, float]:
    """The last logged value of every scalar tag starting with ``prefix``."""
    acc = _events(run_dir)
    return {t: float(acc.Scalars(t)[-1].value) for t in acc.Tags()["scalars"] if t.startswith(prefix)}


def last_image(run_dir: Path, tag: str) -> tuple[bytes, int]:
    """The last image logged under ``tag`` (PNG bytes, as stored in the event file) and its step."""
    acc = _events(run_dir)
    if tag not in acc.Tags()["images"]:
        raise RuntimeError(f"no {tag!r} image was logged to {run_dir}")
    event = acc.Images(tag)[-1]
    return event.encoded_image_string, int(event.step)


__all__ = ["last_image", "last_scalars"]
