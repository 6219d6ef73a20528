"""A recipe's ``key=value`` overrides, read as YAML into the recipe's tree
(``kdistill.run.config.load_config`` applies them before validation)."""

from __future__ import annotations

from typing import Any

import yaml

import kdistill.io.safe_yaml as safe_yaml
from kdistill.errors import ConfigError


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """``train.epochs=3`` → (["train", "epochs"], 3); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r}: write key=value, e.g. train.epochs=3")
    try:
        value = safe_yaml.load(raw, f"override of {key}") if raw else ""
    except yaml.YAMLError:
        value = raw
    path = [int(part) if part.isdigit() else part for part in key.split(".")]
    return path, value


def apply_override(tree: dict, path: list[str | int], value: Any, text: str) -> None:
    node: Any = tree
    for i, part in enumerate(path[:-1]):
        if isinstance(node, list):
            if not isinstance(part, int) or part >= len(node):
                raise ConfigError(
                    f"override {text!r}: {'.'.join(map(str, path[: i + 1]))} "
                    "is not an item of the list"
                )
            node = node[part]
            continue
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, (dict, list)):
            raise ConfigError(
                f"override {text!r}: {'.'.join(map(str, path[: i + 1]))} is a value, not a section"
            )
        node = nxt
    last = path[-1]
    if isinstance(node, list):
        if not isinstance(last, int) or last >= len(node):
            raise ConfigError(f"override {text!r}: no list item {last}")
    node[last] = value
