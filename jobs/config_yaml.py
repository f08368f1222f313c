"""Reading a config file from someone we do not know: safe, bounded, unambiguous YAML.

`yaml.safe_load` alone refuses python tags but not the rest of what a hostile file can do:
a few hundred bytes of nested anchors and aliases ("billion laughs") expand to gigabytes
once the mapping is copied or dumped, deep nesting costs recursion and time, and a
duplicated key silently keeps the last value. So the text is bounded in bytes, the node
graph in depth and in its size with every alias expanded (computed without expanding
it), and a key given twice in one mapping is an error naming both lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, SequenceNode

from augment.errors import ConfigError

# A config is a page of settings; a palette or id table of a few thousand entries fits easily.
MAX_CONFIG_BYTES = 256 * 1024
MAX_DEPTH = 32
# Nodes after every alias is expanded: what json.dumps, pydantic and the hash will walk.
MAX_EXPANDED_NODES = 200_000

_MERGE_TAG = "tag:yaml.org,2002:merge"


# libyaml parses ~10x faster than PyYAML's pure-Python parser (1.6 s against 14 s for a
# 256 KiB flow list) and limits nesting to 1,000 levels itself; both give the same nodes.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _BoundedLoader(_SafeLoader):  # type: ignore[misc, valid-type]
    """A safe loader with duplicate keys refused and (pure-Python parser) a depth limit."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:  # noqa: D102 - PyYAML hook
        # Only the pure-Python composer calls this (recursively); libyaml composes in C.
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise ConfigError(f"line {mark.line + 1}: nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:  # noqa: D102
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:  # `<<: *base` then overriding a key is legitimate
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key; PyYAML's own check reports it
                continue
            if first is not None:
                raise ConstructorError(None, None, f"duplicate key {key!r} (first given on line {first})",
                                       key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root: Node) -> int:
    """Nodes in the document with every alias expanded, counted once per node object (an
    alias is the same object as its anchor), so a bomb is measured without expanding it.
    Also refuses nesting deeper than `MAX_DEPTH` and recursive aliases."""
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()
    # Iterative post-order walk: a hostile graph must not cost recursion either.
    stack: list[tuple[Node, bool, int]] = [(root, False, 1)]
    while stack:
        node, children_done, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ConfigError(f"line {node.start_mark.line + 1}: nested more than {MAX_DEPTH} levels deep")
        key = id(node)
        if key in sizes:
            continue
        children: list[Node] = []
        if isinstance(node, SequenceNode):
            children = list(node.value)
        elif isinstance(node, MappingNode):
            children = [part for pair in node.value for part in pair]
        if children_done:
            in_progress.discard(key)
            total = 1 + sum(sizes[id(child)] for child in children)
            sizes[key] = min(total, MAX_EXPANDED_NODES + 1)
            continue
        if key in in_progress:
            raise ConfigError("an alias refers to the node that contains it (a recursive structure)")
        in_progress.add(key)
        stack.append((node, True, depth))
        for child in children:
            if id(child) in in_progress:
                raise ConfigError(f"line {child.start_mark.line + 1}: an alias refers to the node that "
                                  "contains it (a recursive structure)")
            if id(child) not in sizes:
                stack.append((child, False, depth + 1))
    return sizes[id(root)]


def _describe(error: yaml.YAMLError) -> str:
    """`line L, column C: problem` for a syntax error; tags named as such."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    if isinstance(error, ConstructorError) and "could not determine a constructor for the tag" in problem:
        return f"{where}the tag {problem.rsplit(' ', 1)[-1]} is not allowed (configs are read with safe_load: " \
               "plain mappings, lists, strings and numbers only)"
    return f"{where}{problem}"


def read_yaml(path: Path) -> Any:
    """The parsed document of `path`, or `ConfigError` naming the file and what is wrong."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config: {error.strerror or error}") from None
    if not path.is_file():
        raise ConfigError(f"{path}: not a regular file")
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: the config is {size:,} bytes; at most {MAX_CONFIG_BYTES:,} are read")
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config: {error.strerror or error}") from None
    if len(data) > MAX_CONFIG_BYTES:  # grew since stat
        raise ConfigError(f"{path}: the config is more than {MAX_CONFIG_BYTES:,} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start}: {data[error.start:error.start + 1]!r})") \
            from None
    return parse_yaml(text, where=str(path))


def parse_yaml(text: str, *, where: str = "config") -> Any:
    """Parse one YAML document within the bounds above."""
    if len(text.encode("utf-8")) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{where}: the config is more than {MAX_CONFIG_BYTES:,} bytes")
    loader = _BoundedLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"{where}: not valid YAML: {_describe(error)}") from None
        if node is None:
            return None
        try:
            nodes = _expanded_size(node)
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None
        if nodes > MAX_EXPANDED_NODES:
            raise ConfigError(f"{where}: with its aliases expanded the config has more than "
                              f"{MAX_EXPANDED_NODES:,} values (an alias bomb?); write it out plainly")
        try:
            return loader.construct_document(node)
        except yaml.YAMLError as error:
            raise ConfigError(f"{where}: not valid YAML: {_describe(error)}") from None
    finally:
        loader.dispose()
