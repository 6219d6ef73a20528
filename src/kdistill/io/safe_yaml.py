"""YAML a user hands us, read with bounds: ``yaml.safe_load`` runs no code, but it still expands
aliases, so a few hundred bytes ("billion laughs": nine anchors, each naming the previous one
nine times) become gigabytes the moment the tree is copied, validated or written back out.

The composed node graph is measured before any Python object is built: every alias counts as a
full copy of what it names, and a recipe may expand to ``MAX_EXPANDED`` characters. Sizes are
memoised per node, so measuring costs the size of the text, not of its expansion.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kdistill.errors import ConfigError

MAX_TEXT = 1_000_000  # characters of YAML text (a real recipe is a few kB)
MAX_EXPANDED = 1_000_000  # characters after every alias is replaced by what it names
MAX_DEPTH = 64  # nesting levels (a recipe has about four)


class _Measure:
    """Expanded size of a node graph: a scalar weighs its length + 1, a collection 1 + its items."""

    def __init__(self, source: str):
        self.source = source
        self.sizes: dict[int, int] = {}
        self.open: set[int] = set()

    def size(self, node: yaml.Node, depth: int = 0) -> int:
        key = id(node)
        if key in self.sizes:
            return self.sizes[key]
        if key in self.open:
            raise ConfigError(
                f"{self.source}: a YAML alias refers to itself "
                "(a recursive structure); write the values out"
            )
        if depth > MAX_DEPTH:
            raise ConfigError(
                f"{self.source}: YAML nested deeper than "
                f"{MAX_DEPTH} levels; a recipe needs a handful"
            )
        self.open.add(key)
        if isinstance(node, yaml.ScalarNode):
            total = len(node.value) + 1
        else:
            children = (
                node.value
                if isinstance(node, yaml.SequenceNode)
                else [n for pair in node.value for n in pair]
            )
            total = 1
            for child in children:
                total += self.size(child, depth + 1)
                if total > MAX_EXPANDED:
                    break
        self.open.discard(key)
        self.sizes[key] = total
        if total > MAX_EXPANDED:
            raise ConfigError(
                f"{self.source}: the YAML expands to more "
                f"than {MAX_EXPANDED:,} characters once its "
                "aliases (*name) are replaced by what they name; "
                "write the values out instead of aliasing them"
            )
        return total


def load(text: str, source: str) -> Any:
    """``yaml.safe_load`` of ``text`` with the bounds above; ``source`` names it in errors.

    Syntax errors propagate as ``yaml.YAMLError`` (the caller knows how to point at the line);
    anything beyond a bound is a ``ConfigError``.
    """
    if len(text) > MAX_TEXT:
        raise ConfigError(
            f"{source}: {len(text):,} characters of YAML; a recipe may have at most {MAX_TEXT:,}"
        )
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _Measure(source).size(node)
        return loader.construct_document(node)
    except RecursionError:
        raise ConfigError(
            f"{source}: YAML nested too deeply to read; a recipe needs a handful of levels"
        ) from None
    finally:
        loader.dispose()


def load_file(path: str | Path) -> Any:
    """``load`` of a file, refused by its size before it is read."""
    path = Path(path)
    size = path.stat().st_size
    if size > 4 * MAX_TEXT:  # up to 4 bytes per character in UTF-8
        raise ConfigError(
            f"{path}: {size:,} bytes; a recipe may have at most {MAX_TEXT:,} characters"
        )
    return load(path.read_text(), str(path))


class _PlainDumper(yaml.SafeDumper):
    def ignore_aliases(self, data) -> bool:
        return True


def dump(data: Any) -> str:
    """``yaml.safe_dump`` that writes every value out (no anchors or aliases), in the given order:
    the run's ``config.yaml`` reads the same to a person and to ``load``."""
    return yaml.dump(data, Dumper=_PlainDumper, sort_keys=False)


__all__ = ["MAX_DEPTH", "MAX_EXPANDED", "MAX_TEXT", "dump", "load", "load_file"]
