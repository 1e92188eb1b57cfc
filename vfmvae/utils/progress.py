"""Progress bars with an ETA for the long loops of the commands (docs/commands.md, "Console").

Library loops (feature extraction of the ADM suite, reconstruction metrics, SE-CKNNA features, latents for the
DiT probes) wrap their iterable in `progress(...)`. It is a no-op unless a command turned bars on with
`progress_enabled()`, so the same loops stay silent inside a training run (the SE-CKNNA probe callback) and in
library use. Only rank 0 draws a bar. On a terminal the bar redraws every 0.5 s; when stderr is a file (a batch
job's log) it writes a line at most every 60 s, so the log still shows the ETA without filling up.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
__all__ = ["progress", "progress_enabled"]

_enabled = False


def _is_rank_zero() -> bool:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0  # launched by torchrun/SLURM, before the process group exists


@contextlib.contextmanager
def progress_enabled(enabled: bool = True) -> Iterator[None]:
    """Bars on (``enabled``) for the body, restored afterwards; a command's ``--no-progress`` passes False."""
    global _enabled
    before, _enabled = _enabled, bool(enabled)
    try:
        yield
    finally:
        _enabled = before


def progress(iterable: Iterable[T], *, total: int | None = None, desc: str = "", unit: str = "batch") -> Iterable[T]:
    """``iterable`` itself, or a tqdm bar over it (rank 0, bars enabled): count, rate and time left."""
    if not _enabled or not _is_rank_zero():
        return iterable
    from tqdm.auto import tqdm

    tty = sys.stderr.isatty()
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        dynamic_ncols=True,
        leave=False,  # a finished loop gives its line back to the next one and the result table
        mininterval=0.5 if tty else 60.0,
        file=sys.stderr,
    )
