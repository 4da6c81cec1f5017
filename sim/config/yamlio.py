"""The one YAML reader of user files: strict about what plain `yaml.safe_load` lets slide.

- A key given twice in one mapping is an error (safe_load silently keeps the last).
  Merge keys (`<<: *anchor`) may still be overridden: that is what they are for.
- Numbers written like `1e-3` or `2E6` are numbers (YAML 1.2), not strings.
- Aliases cannot blow a small file up: the document, with every alias expanded, may hold
  at most `MAX_NODES` values (a "billion laughs" file fails in milliseconds).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

MAX_NODES = 1_000_000

_FLOAT_1_2 = re.compile(
    r"""^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$""",
)


class YamlProblem(ValueError):
    """A YAML document that parses but is not acceptable (the message names the line)."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader with duplicate-key errors and YAML 1.2 exponent floats."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise YamlProblem(
                        f"duplicate key '{key}' (line {line}; first given on line {seen[key]})"
                    )
                seen[key] = line
            except TypeError:  # an unhashable key: the base class reports it
                break
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_1_2, list("-+0123456789"))


def _count_nodes(value: Any, limit: int) -> int:
    """Values in the document with aliases expanded, stopping early past `limit`."""
    sizes: dict[int, int] = {}

    def size(v: Any) -> int:
        if not isinstance(v, dict | list):
            return 1
        known = sizes.get(id(v))
        if known is not None:
            return known
        sizes[id(v)] = limit + 1  # a reference cycle counts as too big
        items = list(v.keys()) + list(v.values()) if isinstance(v, dict) else v
        total = 1
        for item in items:
            total += size(item)
            if total > limit:
                break
        sizes[id(v)] = total
        return total

    return size(value)


def parse_yaml(text: str) -> Any:
    """Parse YAML text strictly; raises `yaml.YAMLError` or `YamlProblem`."""
    data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    if _count_nodes(data, MAX_NODES) > MAX_NODES:
        raise YamlProblem(
            f"expands to more than {MAX_NODES:,} values (aliases of aliases?); "
            "write the values out or use a range"
        )
    return data
