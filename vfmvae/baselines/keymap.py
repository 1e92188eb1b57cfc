"""Strict conversion of an official state dict to our key names.

Every official key is either renamed by a rule or ignored with a stated reason; an official key that is neither,
a key of our model that nothing maps to, and a shape that does not fit are each an error that names the keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["KeyRule", "convert_strict"]


@dataclass(frozen=True)
class KeyRule:
    """``pattern`` (a full-match regex on the official key) -> ``replace(match)`` (our key).

    ``linear_from_conv1x1``: the official tensor is a 1x1 conv weight ``(C_out, C_in, 1, 1)`` and ours a Linear
    weight ``(C_out, C_in)`` (LDM attention); the reshape is exact.
    """

    pattern: str
    replace: Callable[[re.Match], str]
    linear_from_conv1x1: bool = False


def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def convert_strict(
    state: Mapping[str, torch.Tensor],
    model: nn.Module,
    rules: list[KeyRule],
    ignored: Mapping[str, str],
    source: str,
) -> dict[str, torch.Tensor]:
    """Official ``state`` -> a state dict with exactly ``model``'s keys and shapes.

    Args:
        rules: tried in order; the first full match renames the key.
        ignored: official key prefix -> reason it is not loaded (e.g. training-only losses).
        source: what the weights are, for the error messages ("VA-VAE checkpoint", ...).
    """
    compiled = [(re.compile(rule.pattern), rule) for rule in rules]
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unknown: list[str] = []
    for key, value in state.items():
        if any(key.startswith(prefix) for prefix in ignored):
            continue
        for pattern, rule in compiled:
            m = pattern.fullmatch(key)
            if m is None:
                continue
            ours = rule.replace(m)
            if ours in out:
                raise KeyError(f"{source}: keys {origin[ours]} and {key} both map to {ours}")
            if rule.linear_from_conv1x1 and value.ndim == 4 and value.shape[2:] == (1, 1):
                value = value.reshape(value.shape[0], value.shape[1])
            out[ours], origin[ours] = value, key
            break
        else:
            unknown.append(key)
    expected = model.state_dict()
    missing = [k for k in expected if k not in out]
    unexpected = [origin[k] for k in out if k not in expected]  # a rule produced a key this config does not have
    if unknown or unexpected:
        raise KeyError(
            f"{source}: unknown keys {_listing(unknown + unexpected)} (not part of this architecture; check the config, "
            "or the file is not what it claims to be)"
        )
    if missing:
        raise KeyError(f"{source}: missing keys {_listing(missing)} (our names; the file lacks their official keys)")
    bad = [
        f"{origin[k]} {tuple(out[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items() if out[k].shape != v.shape
    ]
    if bad:
        raise ValueError(f"{source}: shape mismatch (file vs config) for {_listing(bad, 4)}; the config does not fit")
    return out
