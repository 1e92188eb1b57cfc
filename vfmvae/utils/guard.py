"""Non-finite / safe-loss guard: decide per step, from named loss terms, whether to update.

Losses in this project return dicts of named terms (docs/design.md, "Layers of the code") so that this
guard sees every term. Each step the caller asks :meth:`NonFiniteGuard.check` whether the
step is safe; on an unsafe step the caller does **not** call ``optimizer.step()`` (so no
parameter and no optimiser-state change), the guard counts it, and after
``max_consecutive_skips`` unsafe steps in a row it raises :class:`NonFiniteLossError` that
names the offending terms.

Deviation from the official code (docs/design.md, "Tokenizer stages and losses"): the official loop backprops
``nan_to_num(loss) * 0`` and still calls Adam's ``step`` (with beta1 = 0 the weights stay put
but the second moment decays). We skip the step entirely, which is what "no parameter
change" means for any optimiser (the caller neither backprops nor steps; the graph is freed
when the terms go out of scope). The official *rule* (ratio to the last safe value, warm-up
of 50k images) lives with the tokenizer losses, ``vfmvae.losses.safe_loss.TokenizerSafeLossRule``,
and plugs in as ``rule=``. A rule may also have ``accept(terms)`` (called after each step all
ranks took) and ``state_dict``/``load_state_dict`` (checkpointed with the guard).

Distributed: when ``torch.distributed`` is initialised the per-rank "unsafe" flag is
max-reduced over ranks (as the official code does), so every rank skips together and DDP /
FSDP collectives stay in lock-step. The names of the offending terms are local to the rank
that saw them; the others report ``"<another rank>"``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch
import torch.distributed as dist

__all__ = ["NonFiniteGuard", "NonFiniteLossError", "GuardRule", "non_finite_rule"]


class NonFiniteLossError(RuntimeError):
    """Raised after too many consecutive unsafe steps; the message names the bad terms."""


class GuardRule(Protocol):
    """``rule(terms) -> names of unsafe terms`` (empty = safe). ``terms`` hold python floats."""

    def __call__(self, terms: Mapping[str, float]) -> list[str]: ...


def non_finite_rule(terms: Mapping[str, float]) -> list[str]:
    """Default rule: a term is unsafe iff it is NaN or +-inf."""
    return [name for name, value in terms.items() if not math.isfinite(value)]


def _to_floats(terms: Mapping[str, Any]) -> dict[str, float]:
    """Named terms -> python floats with a single device sync (one ``.tolist()``)."""
    scalars = []
    for name, value in terms.items():
        if isinstance(value, torch.Tensor):
            # Non-scalar terms are summed: the sum is NaN/inf iff an element is (or it
            # overflows, which is unsafe too).
            scalars.append(value.detach().double().sum())
        elif isinstance(value, (int, float)):
            scalars.append(torch.tensor(float(value), dtype=torch.float64))
        else:
            raise TypeError(f"loss term {name!r} must be a tensor or a number, got {type(value).__name__}")
    device = next((s.device for s in scalars if s.device.type != "cpu"), torch.device("cpu"))
    values = torch.stack([s.to(device) for s in scalars]).tolist()
    return {str(name): v for name, v in zip(terms.keys(), values)}


class NonFiniteGuard:
    """Per-step skip decision from a dict of named loss terms.

    Args:
        max_consecutive_skips: raise :class:`NonFiniteLossError` when this many steps in a row
            were unsafe (the N-th unsafe step raises). ``0`` disables the stop.
        rule: callable ``terms -> list of unsafe names``; default :func:`non_finite_rule`.
            If it has ``accept(terms)``, that is called after every safe step; if it has
            ``state_dict``/``load_state_dict``, its state is checkpointed with the guard.
        process_group: group for the distributed max-reduction (default: the world).

    Usage::

        terms = loss_fn(...)                 # {"total": ..., "l1": ..., "lpips": ...}
        if guard.check(terms):               # identical on all ranks
            terms["total"].backward(); opt.step()
        opt.zero_grad()
    """

    def __init__(
        self,
        max_consecutive_skips: int = 100,
        rule: Callable[[Mapping[str, float]], list[str]] | None = None,
        process_group: Any = None,
    ) -> None:
        if max_consecutive_skips < 0:
            raise ValueError(f"max_consecutive_skips must be >= 0, got {max_consecutive_skips}")
        self.max_consecutive_skips = int(max_consecutive_skips)
        self.rule = rule if rule is not None else non_finite_rule
        self.process_group = process_group
        self.num_steps = 0
        self.num_skipped = 0
        self.consecutive_skips = 0
        self.last_bad_terms: list[str] = []

    # ------------------------------------------------------------------ decision
    def _reduce_flag(self, unsafe: bool, device: torch.device) -> bool:
        """Max-reduce the flag so that all ranks take the same decision."""
        if not (dist.is_available() and dist.is_initialized()):
            return unsafe
        # The flag lives where the collective backend wants it: CUDA for NCCL, CPU otherwise
        # (gloo's CUDA support is partial).
        if dist.get_backend(self.process_group) == "nccl":
            device = device if device.type == "cuda" else torch.device("cuda", torch.cuda.current_device())
        else:
            device = torch.device("cpu")
        flag = torch.tensor([1.0 if unsafe else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.process_group)
        return bool(flag.item() > 0)

    def check(self, terms: Mapping[str, Any]) -> bool:
        """Return ``True`` if the step should be taken, ``False`` if it must be skipped.

        ``terms``: named scalar losses (tensors or numbers); non-scalar tensors are summed.
        Raises :class:`NonFiniteLossError` after ``max_consecutive_skips`` unsafe steps in a row.
        """
        if not isinstance(terms, Mapping) or len(terms) == 0:
            raise ValueError("NonFiniteGuard.check expects a non-empty dict of named loss terms")
        device = next((v.device for v in terms.values() if isinstance(v, torch.Tensor)), torch.device("cpu"))
        values = _to_floats(terms)
        bad = list(self.rule(values))
        unknown = [b for b in bad if b not in values]
        if unknown:
            raise ValueError(f"guard rule returned names that are not loss terms: {unknown}")
        unsafe = self._reduce_flag(bool(bad), device)
        self.num_steps += 1
        if not unsafe:
            self.consecutive_skips = 0
            self.last_bad_terms = []
            if hasattr(self.rule, "accept"):
                self.rule.accept(values)
            return True
        self.num_skipped += 1
        self.consecutive_skips += 1
        self.last_bad_terms = bad if bad else ["<another rank>"]
        if self.max_consecutive_skips and self.consecutive_skips >= self.max_consecutive_skips:
            detail = ", ".join(f"{n}={values[n]}" for n in bad) if bad else "flagged on another rank"
            raise NonFiniteLossError(
                f"{self.consecutive_skips} consecutive training steps skipped (limit "
                f"{self.max_consecutive_skips}); unsafe loss terms at the last step: {detail}. "
                f"{self.num_skipped} of {self.num_steps} steps skipped in total."
            )
        return False

    __call__ = check

    @property
    def skip_fraction(self) -> float:
        return self.num_skipped / max(self.num_steps, 1)

    def log_dict(self) -> dict[str, float]:
        """Scalars to log each step (`guard/skipped` is 1.0 on a skipped step)."""
        return {
            "guard/skipped": float(self.consecutive_skips > 0),
            "guard/num_skipped": float(self.num_skipped),
            "guard/consecutive_skips": float(self.consecutive_skips),
        }

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "num_steps": self.num_steps,
            "num_skipped": self.num_skipped,
            "consecutive_skips": self.consecutive_skips,
        }
        if hasattr(self.rule, "state_dict"):
            state["rule"] = self.rule.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = {"num_steps", "num_skipped", "consecutive_skips"} - set(state)
        if missing:
            raise KeyError(f"NonFiniteGuard state is missing {sorted(missing)}")
        self.num_steps = int(state["num_steps"])
        self.num_skipped = int(state["num_skipped"])
        self.consecutive_skips = int(state["consecutive_skips"])
        if "rule" in state and hasattr(self.rule, "load_state_dict"):
            self.rule.load_state_dict(state["rule"])
