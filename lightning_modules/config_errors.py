"""One-line configuration errors for `python -m lightning_modules` (used by `lightning_modules/cli.py`).

jsonargparse (4.x) reports a bad config with plain `TypeError` / `ValueError` / `KeyError` objects chained by
`raise ... from ...`; their only payload is a message, so the config key, the class and the expected type exist
only inside text. Rather than reading that text, a failed parse is diagnosed from the config itself:

1. :func:`raw_config` rebuilds the config the user gave (the ``--config`` YAML files, then the ``--a.b=c``
   overrides, as jsonargparse merges them);
2. :func:`find_problems` walks it against the signatures of the classes it names (``trainer`` ->
   `Trainer`, ``checkpoint`` -> `CheckpointPolicy`, every ``class_path``/``init_args`` spec) and checks each
   simple value (int, float, bool, str, None, Literal) with jsonargparse's own type check;
3. the *type* of the innermost exception of jsonargparse's chain says which kind of problem it stopped at
   (`KeyError` or an "unrecognized arguments" `ArgumentError`: an unknown key; `ValueError` / `TypeError`: a
   wrong type), and the first problem of that kind becomes the message.

When the diagnosis finds nothing, the caller prints jsonargparse's own message on one line.

Errors raised by the objects the config builds (a constructor refusing a value, a callback's ``setup`` missing a
file) are attributed by :func:`attribute_error`: the traceback's frames say which configured object raised
(the innermost frame whose ``self`` is an instance of a ``class_path`` of the config), and the arguments of
that object whose name and value the message quotes are named as the keys at fault.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import os
import re
import traceback
import types
import typing
from argparse import ArgumentError
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

__all__ = [
    "ConfigError",
    "Problem",
    "attribute_error",
    "error_chain",
    "explain_parse_error",
    "find_problems",
    "keys_mentioned",
    "one_line",
    "origin_error",
    "raw_config",
    "resolve_class",
]


class ConfigError(ValueError):
    """A configuration mistake; the message (one line) names the config key (or path) at fault."""


_SPEC_KEYS = ("class_path", "init_args", "dict_kwargs", "__path__")


@dataclasses.dataclass
class Problem:
    """A configuration problem at a dotted ``key``."""

    kind: Literal["unknown", "type"]
    key: str
    owner: str | None = None  # class_path of the spec the key belongs to (unknown keys)
    accepted: tuple[str, ...] = ()  # the owner's argument names (unknown keys)
    expected: str = ""  # type names (wrong types)
    value: Any = None

    def message(self) -> str:
        if self.kind == "type":
            return f"config error: wrong type for '{self.key}': expected {self.expected}, got {self.value!r}"
        name = self.key.rsplit(".", 1)[-1]
        where = f" ({self.owner} has no argument '{name}')" if self.owner else ""
        close = difflib.get_close_matches(name, self.accepted, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"config error: unknown key '{self.key}'{where}{hint}"


# ------------------------------------------------------------------------------------------- the raw config
def _merge(dst: dict, src: dict) -> dict:
    for key, value in src.items():
        old = dst.get(key)
        old_class = old.get("class_path") if isinstance(old, dict) else None
        same_class = not (isinstance(value, dict) and "class_path" in value and value["class_path"] != old_class)
        if isinstance(old, dict) and isinstance(value, dict) and same_class:
            _merge(old, value)
        else:  # a new class_path discards the old init_args, as in jsonargparse
            dst[key] = value
    return dst


def _set(cfg: dict, parts: list[str], value: Any, append: bool) -> None:
    node: Any = cfg
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if isinstance(child, list):  # `--trainer.callbacks.x=...` sets an argument of the last callback
            child = child[-1] if child else None
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
        if "class_path" in node and parts[i + 1] not in _SPEC_KEYS:  # `--model.lr` = `--model.init_args.lr`
            node = node.setdefault("init_args", {})
    if append:  # `--trainer.callbacks+=pkg.Class`
        items = node.get(parts[-1])
        items = node[parts[-1]] = items if isinstance(items, list) else [] if items is None else [items]
        items.append({"class_path": value} if isinstance(value, str) else value)
    else:
        if parts[-1] == "class_path" and node.get("class_path") not in (None, value):
            node.pop("init_args", None)  # never judge the old class's arguments against the new class
        node[parts[-1]] = value


def _load_config(value: str) -> dict:
    path = Path(value)
    loaded = yaml.safe_load(path.read_text()) if path.is_file() else yaml.safe_load(value)
    return loaded if isinstance(loaded, dict) else {}


def raw_config(args: Sequence[str] | dict | None) -> dict:
    """The config as given: ``--config`` files merged in order, then ``--key=value`` overrides (values as strings).

    The subcommand and flags without a value (``--print_config``) are ignored.
    """
    if isinstance(args, dict) or hasattr(args, "as_dict"):
        return args.as_dict() if hasattr(args, "as_dict") else dict(args)
    tokens = list(args or ())
    cfg: dict = {}
    i = 0
    while i < len(tokens):
        token, i = tokens[i], i + 1
        if not token.startswith("--"):
            continue
        key, has_value, value = token[2:].partition("=")
        if not has_value:
            if i < len(tokens) and not tokens[i].startswith("--"):
                value, i = tokens[i], i + 1
            else:
                continue
        if key == "config":
            _merge(cfg, _load_config(value))
        elif key.rstrip("+"):
            _set(cfg, key.rstrip("+").split("."), value, append=key.endswith("+"))
    return cfg


# ------------------------------------------------------------------------------------------- the walk
def resolve_class(class_path: Any) -> type | None:
    """The class a ``class_path`` names, or None when it cannot be imported."""
    if not isinstance(class_path, str) or "." not in class_path:
        return None
    module, name = class_path.rsplit(".", 1)
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def _signature(cls: type) -> tuple[tuple[str, ...], dict[str, Any], bool]:
    """(argument names, their type hints, whether ``**kwargs`` accepts anything else)."""
    if dataclasses.is_dataclass(cls):
        names = tuple(f.name for f in dataclasses.fields(cls))
        target, var_kw = cls, False
    else:
        params = inspect.signature(cls.__init__).parameters.values()
        names = tuple(p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
        target, var_kw = cls.__init__, any(p.kind == p.VAR_KEYWORD for p in params)
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable forward references: no type checks for this class
        hints = {}
    return names, hints, var_kw


def _simple_types(hint: Any) -> tuple | None:
    """The members of a simple hint (int, float, bool, str, None, Literal and unions of them), else None."""
    if hint in (int, float, bool, str, type(None)):
        return (hint,)
    origin = typing.get_origin(hint)
    if origin is Literal:
        return (hint,)
    if origin in (typing.Union, types.UnionType):
        members = [_simple_types(arg) for arg in typing.get_args(hint)]
        return None if any(m is None for m in members) else tuple(t for m in members for t in m)
    return None


def _type_names(members: tuple) -> str:
    names = [
        f"one of {list(typing.get_args(t))}" if typing.get_origin(t) is Literal else t.__name__
        for t in members
        if t is not type(None)  # the "or null" alternative of an Optional is never the error
    ]
    return " or ".join(names)


def _accepts(hint: Any, value: Any) -> bool:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--value", type=hint)
    try:
        parser.parse_object({"value": value})
    except (ArgumentError, TypeError, ValueError):
        return False
    return True


def _is_spec(value: Any) -> bool:
    return isinstance(value, dict) and "class_path" in value


def _check_spec(spec: dict, key: str) -> Iterator[Problem]:
    cls = resolve_class(spec["class_path"])
    if cls is not None and isinstance(spec.get("init_args") or {}, dict):
        yield from _check_arguments(cls, spec.get("init_args") or {}, f"{key}.init_args", spec["class_path"])


def _check_arguments(cls: type, arguments: dict, prefix: str, owner: str | None) -> Iterator[Problem]:
    names, hints, var_kw = _signature(cls)
    for name, value in arguments.items():
        key = f"{prefix}.{name}"
        if name not in names:
            if not var_kw and name not in _SPEC_KEYS:
                yield Problem("unknown", key, owner=owner, accepted=names)
        elif _is_spec(value):
            yield from _check_spec(value, key)
        elif isinstance(value, list) and any(_is_spec(v) for v in value):
            for i, item in enumerate(value):
                if _is_spec(item):
                    yield from _check_spec(item, f"{key}[{i}]")
        elif (members := _simple_types(hints.get(name))) is not None and not _accepts(hints[name], value):
            yield Problem("type", key, expected=_type_names(members), value=value)


def find_problems(config: dict, groups: dict[str, type]) -> Iterator[Problem]:
    """Unknown keys and wrong types in `config`; ``groups`` maps section names to their class (``trainer``)."""
    for section, value in config.items():
        if section in groups and isinstance(value, dict) and not _is_spec(value):
            yield from _check_arguments(groups[section], value, section, owner=None)
        elif _is_spec(value):
            yield from _check_spec(value, section)


# ------------------------------------------------------------------------------------------- the exceptions
def error_chain(err: BaseException) -> Iterator[BaseException]:
    """`err`, its cause, the cause's cause, ... (jsonargparse chains every level with ``raise ... from``)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__


def _raised_in_jsonargparse(err: BaseException) -> bool:
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_globals.get("__name__", "").split(".")[0] == "jsonargparse"


def origin_error(err: BaseException) -> BaseException:
    """The first exception of the chain raised outside jsonargparse: e.g. a constructor's own error."""
    return next((e for e in error_chain(err) if not _raised_in_jsonargparse(e)), err)


def _kind(err: BaseException) -> str | None:
    innermost = list(error_chain(err))[-1]
    if isinstance(innermost, KeyError) or type(innermost) is ArgumentError:
        return "unknown"  # jsonargparse's NSKeyError, or argparse's "unrecognized arguments"
    if isinstance(innermost, (TypeError, ValueError)):
        return "type"
    return None


def explain_parse_error(err: BaseException, args: Sequence[str] | dict | None, groups: dict[str, type]) -> str | None:
    """One line naming the key behind jsonargparse's parse error `err` for the command line `args`, or None."""
    kind = _kind(err)
    if kind is None:
        return None
    try:
        config = raw_config(args)
    except (OSError, yaml.YAMLError):
        return None  # an unreadable config file: jsonargparse's own message says which
    problem = next((p for p in find_problems(config, groups) if p.kind == kind), None)
    return None if problem is None else problem.message()


def one_line(err: BaseException) -> str:
    """jsonargparse's multi-line report on one line (the fallback message)."""
    return " ".join(str(err).split())


# ------------------------------------------------------------------------------------------- attribution
def _config_items(config: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, leaf value) pairs of a (namespace / dict / list) config."""
    if hasattr(config, "as_dict"):
        config = config.as_dict()
    if isinstance(config, dict):
        for k, v in config.items():
            yield from _config_items(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(config, (list, tuple)):
        for i, v in enumerate(config):
            yield from _config_items(v, f"{prefix}[{i}]")
    else:
        yield prefix, config


def keys_mentioned(config: Any, message: str) -> list[str]:
    """Config keys whose (path-like) string value appears in ``message``."""
    found = {}
    for key, value in _config_items(config):
        if isinstance(value, str) and len(value) > 1 and ("/" in value or os.sep in value) and value in message:
            found[key] = value
    # A folder that merely contains the path at fault (e.g. default_root_dir) is not the culprit.
    return [k for k, v in found.items() if not any(v != w and w.startswith(v) for w in found.values())]


def _specs(config: Any, prefix: str = "") -> Iterator[tuple[str, dict]]:
    """(dotted key, spec) for every ``class_path`` spec of the config, nested ones included."""
    if isinstance(config, dict):
        if _is_spec(config):
            yield prefix, config
        for k, v in config.items():
            if k != "class_path":
                yield from _specs(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(config, list):
        for i, v in enumerate(config):
            yield from _specs(v, f"{prefix}[{i}]")


def _raising_spec(config: dict, err: BaseException) -> tuple[str, dict] | None:
    """The spec whose object raised ``err``: the innermost traceback frame whose ``self`` the config built."""
    classes = [(key, spec, resolve_class(spec["class_path"])) for key, spec in _specs(config)]
    classes = [(key, spec, cls) for key, spec, cls in classes if cls is not None]
    for frame, _ in reversed(list(traceback.walk_tb(err.__traceback__))):
        owner = frame.f_locals.get("self")
        matches = [(key, spec) for key, spec, cls in classes if owner is not None and isinstance(owner, cls)]
        if len(matches) == 1:
            return matches[0]
        if matches:  # several specs of that class: name the section only when they share it
            return None
    return None


def _argument_quoted(name: str, value: Any, message: str) -> bool:
    """Whether ``message`` quotes argument ``name`` followed by its ``value``.

    At most two words and three other characters may come between (``lr=-0.0001``, ``preset 'x'``,
    ``transport preset 'x'``, ``tokenizer: '${TOKENIZER}'``), so a value merely listed among the choices does
    not count.
    """
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, (int, float)):
        quoted = re.escape(str(value)) + r"(?![\d.])"
    elif isinstance(value, str) and value:
        quoted = re.escape(repr(value))
    else:
        return False
    return bool(re.search(rf"(?<!\w){re.escape(name)}(?!\w)(?:\s+\w+){{0,2}}\W{{0,3}}{quoted}", message))


def attribute_error(config: Any, err: BaseException, doing: str) -> ConfigError:
    """A one-line :class:`ConfigError` for ``err`` (raised while ``doing``), naming the key(s) at fault if it can.

    jsonargparse wraps a constructor's exception in its own reports; the constructor's exception is found by
    walking the ``__cause__`` chain (:func:`origin_error`). Keys: config values that look like paths and
    appear in the message; else the arguments of the object that raised (:func:`_raising_spec`) whose name
    and value the message quotes; else the object's section.
    """
    config = config.as_dict() if hasattr(config, "as_dict") else config
    origin = origin_error(err)
    message = one_line(origin)
    keys = keys_mentioned(config, message)
    owner = _raising_spec(config, origin)
    if not keys and owner is not None:
        key, spec = owner
        args = spec.get("init_args") or {}
        keys = [f"{key}.init_args.{name}" for name, value in args.items() if _argument_quoted(name, value, message)]
        if not keys:
            return ConfigError(f"config error in {key} ({spec['class_path']}): {message}")
    if keys:
        return ConfigError(f"config error at {', '.join(keys)}: {message}")
    return ConfigError(f"config error while {doing}: {message}")
