"""YAML for the CLI that refuses a key given twice in one mapping (YAML itself keeps the last value silently).

``lr: 1.0e-3`` and, ten lines further down, ``lr: 5.0e-4`` in the same mapping is almost always an editing
mistake; PyYAML (and so jsonargparse) keeps the second value without a word. :func:`strict_yaml_load` first
composes the document (nodes only, nothing is constructed) and walks its mappings; a repeated key raises
:class:`DuplicateKeyError` naming the key, its dotted path, the file and both line numbers. The document is
then loaded by jsonargparse's own YAML loader, so values parse exactly as before.

:func:`register` installs it as the parser mode :data:`PARSER_MODE` (the CLI passes
``parser_kwargs={"parser_mode": PARSER_MODE}``); other jsonargparse parsers in the process keep plain YAML.
"""

from __future__ import annotations

import os
from typing import Any

import yaml

__all__ = ["PARSER_MODE", "DuplicateKeyError", "check_duplicate_keys", "register", "strict_yaml_load"]

PARSER_MODE = "yaml_unique_keys"


class DuplicateKeyError(ValueError):
    """A mapping of a YAML document repeats a key; the message is one line."""


def _walk(node: yaml.Node, path: str, where: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = key_node.value
                line = key_node.start_mark.line + 1
                dotted = f"{path}.{key}" if path else str(key)
                if key in seen:
                    lines = f" (lines {seen[key]} and {line})" if seen[key] != line else ""
                    raise DuplicateKeyError(
                        f"config error: duplicate key '{dotted}' in {where}{lines}; "
                        "YAML would keep only the last value: delete one of them"
                    )
                seen[key] = line
                _walk(value_node, dotted, where)
            else:
                _walk(value_node, path, where)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, f"{path}[{i}]", where)


def check_duplicate_keys(text: str, where: str = "the config") -> None:
    """Raise :class:`DuplicateKeyError` if a mapping in the YAML ``text`` repeats a key."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return  # a syntax error: the real loader reports it
    if node is not None:
        _walk(node, "", where)


def strict_yaml_load(stream: str, path: str = "") -> Any:
    """jsonargparse's YAML loader, after :func:`check_duplicate_keys` (``path``: the file, for the message)."""
    from jsonargparse import get_loader

    if isinstance(stream, str):
        # jsonargparse passes the file's base name and reads it from inside the file's folder (its cwd then).
        where = os.path.abspath(path) if path and os.path.isfile(path) else str(path or "a command-line value")
        check_duplicate_keys(stream, where)
    return get_loader("yaml")(stream)


def register() -> str:
    """Install :func:`strict_yaml_load` as jsonargparse's parser mode :data:`PARSER_MODE`; returns the mode."""
    from jsonargparse import set_loader

    set_loader(PARSER_MODE, strict_yaml_load, exceptions=(yaml.YAMLError,))
    return PARSER_MODE
