"""NonFiniteGuard: an injected NaN step is skipped with no parameter / optimiser change; the
run stops with a clear error after N consecutive skips; state round-trips."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from vfmvae.utils.guard import NonFiniteGuard, NonFiniteLossError, non_finite_rule


def _loss_terms(model: nn.Module, x: torch.Tensor, inject: float | None = None) -> dict[str, torch.Tensor]:
    out = model(x)
    l1 = out.abs().mean()
    l2 = out.pow(2).mean()
    if inject is not None:
        l2 = l2 * inject  # NaN / inf injected into one named term
    return {"total": l1 + l2, "l1": l1, "l2": l2}


def _step(model, opt, guard, x, inject=None) -> bool:
    terms = _loss_terms(model, x, inject)
    opt.zero_grad(set_to_none=True)
    take = guard.check(terms)
    if take:
        terms["total"].backward()
        opt.step()
    return take


@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.Adam])
def test_nan_step_is_skipped_without_any_change(opt_cls):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = opt_cls(model.parameters(), lr=0.1)
    guard = NonFiniteGuard(max_consecutive_skips=3)
    x = torch.randn(4, 3)
    assert _step(model, opt, guard, x)
    params = copy.deepcopy(model.state_dict())
    opt_state = copy.deepcopy(opt.state_dict())
    assert not _step(model, opt, guard, x, inject=float("nan"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, params[k]), k
    assert str(opt.state_dict()) == str(opt_state)  # step counters and moments untouched
    assert guard.last_bad_terms == ["total", "l2"]
    assert (guard.num_steps, guard.num_skipped, guard.consecutive_skips) == (2, 1, 1)
    assert guard.log_dict()["guard/skipped"] == 1.0
    assert _step(model, opt, guard, x)  # a finite step is taken again and resets the run of skips
    assert guard.consecutive_skips == 0 and guard.num_skipped == 1
    assert not torch.equal(model.weight, params["weight"])


def test_stops_after_n_consecutive_skips_naming_terms():
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = NonFiniteGuard(max_consecutive_skips=3)
    x = torch.randn(4, 3)
    assert not _step(model, opt, guard, x, inject=float("inf"))
    assert not _step(model, opt, guard, x, inject=float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"3 consecutive.*l2=nan"):
        _step(model, opt, guard, x, inject=float("nan"))


def test_non_consecutive_skips_do_not_stop():
    guard = NonFiniteGuard(max_consecutive_skips=2)
    for i in range(6):
        guard.check({"loss": float("nan") if i % 2 else 1.0})
    assert guard.num_skipped == 3 and guard.skip_fraction == 0.5


def test_custom_rule_tensor_terms_and_bad_input():
    # Pluggable rule: anything above 5 is unsafe.
    guard = NonFiniteGuard(rule=lambda t: [k for k, v in t.items() if v > 5])
    assert guard.check({"a": torch.tensor(1.0), "b": 2})
    assert not guard.check({"a": torch.tensor(6.0), "b": 2})
    assert guard.last_bad_terms == ["a"]
    # Non-scalar tensors count as unsafe when any element is non-finite.
    assert not NonFiniteGuard().check({"per_sample": torch.tensor([1.0, float("nan")])})
    with pytest.raises(ValueError, match="non-empty dict"):
        guard.check({})
    with pytest.raises(TypeError, match="'x'"):
        guard.check({"x": "1.0"})
    with pytest.raises(ValueError, match="not loss terms"):
        NonFiniteGuard(rule=lambda t: ["zzz"]).check({"a": 1.0})
    assert non_finite_rule({"a": 1.0, "b": float("-inf")}) == ["b"]


class RatioRule:
    """A stateful rule in the shape of the tokenizer's: > 10x the last *accepted* value is unsafe."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}
        self.accepted = 0

    def __call__(self, terms):
        return [k for k, v in terms.items() if k in self.last and v > 10 * self.last[k]]

    def accept(self, terms):
        self.accepted += 1
        self.last = dict(terms)

    def state_dict(self):
        return {"last": dict(self.last), "accepted": self.accepted}

    def load_state_dict(self, state):
        self.last, self.accepted = dict(state["last"]), state["accepted"]


def test_stateful_rule_accept_hook_and_state_round_trip():
    rule = RatioRule()
    guard = NonFiniteGuard(max_consecutive_skips=0, rule=rule)
    assert guard.check({"l1": 1.0})
    assert guard.check({"l1": 9.5})
    assert not guard.check({"l1": 96.0})  # > 10 x 9.5
    assert rule.last == {"l1": 9.5} and rule.accepted == 2  # accept() only after taken steps
    assert guard.last_bad_terms == ["l1"]
    restored = NonFiniteGuard(max_consecutive_skips=0, rule=RatioRule())
    restored.load_state_dict(guard.state_dict())
    assert restored.state_dict() == guard.state_dict()
    assert restored.rule.last == {"l1": 9.5}
    assert (restored.num_steps, restored.num_skipped, restored.consecutive_skips) == (3, 1, 1)
    with pytest.raises(KeyError, match="num_skipped"):
        restored.load_state_dict({"num_steps": 1})
    with pytest.raises(ValueError, match=">= 0"):
        NonFiniteGuard(max_consecutive_skips=-1)
