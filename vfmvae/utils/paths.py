"""Paths in run configs that name environment variables (``${TOKENIZER}``, ``${DINOV2}``, ``${DEMO_OUT}``)."""

from __future__ import annotations

import os
import re


def resolve_path(value: str | None, what: str, optional: bool = False) -> str | None:
    """Expand ``$VAR`` / ``${VAR}`` in a config path; an unset variable is a clear error.

    The paper configs name their weights as ``${TOKENIZER}``, ``${DINOV2}`` so that
    ``make train-diffusion TOKENIZER=... DINOV2=...`` fills them in (callbacks in a list cannot be
    overridden one by one on the LightningCLI command line). ``optional``: unset -> ``None``.
    """
    if value is None:
        return None
    names = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", str(value))
    unset = [n for n in names if not os.environ.get(n)]  # unset or empty: both mean "not given"
    if unset:
        if optional:
            return None
        raise ValueError(
            f"{what}: {value!r} needs the environment variable {unset[0]}, which is not set; pass it to make "
            f"(e.g. `make train-diffusion MODEL=reg {unset[0]}=/path/...`) or see configs/diffusion/demo.yaml "
            "for a run without external files"
        )
    expanded = os.path.expandvars(str(value))
    return os.path.expanduser(expanded)


__all__ = ["resolve_path"]
