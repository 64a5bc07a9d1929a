"""Reading a config's YAML within limits, so that a hostile or broken file ends in a ConfigError, not a hang.

PyYAML's ``safe_load`` is safe from code execution but not from size: nested aliases ("billion laughs") expand
exponentially in whatever walks the result, deep nesting exhausts the recursion limit, and a file in another
encoding fails with a bare ``UnicodeDecodeError``. Here aliases are allowed (they are handy in configs) as long
as the document they expand to stays small; files are UTF-8, or UTF-16/32 with a byte-order mark.
"""

from __future__ import annotations

import codecs
import io
from typing import Any

import yaml

from transmodal.errors import ConfigError

MAX_CONFIG_BYTES = 1 << 20
MAX_NODES = 10_000  # values in the document with every alias expanded; real configs have a few hundred
MAX_DEPTH = 32  # nesting levels; real configs have about six
MERGE_TAG = "tag:yaml.org,2002:merge"  # "<<: *anchor" may be written more than once in a mapping

# Longest BOM first: the UTF-32-LE mark begins with the UTF-16-LE one.
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def decode_config(data: bytes, source: str) -> str:
    """UTF-8 text, or UTF-16/32 announced by a byte-order mark; other encodings are refused, not guessed."""
    encoding = next((name for bom, name in _BOMS if data.startswith(bom)), None)
    if encoding is None and b"\x00" in data:
        raise ConfigError(f"{source} contains NUL bytes (UTF-16 without a byte-order mark?). Save the file as UTF-8.")
    encoding = encoding or "utf-8"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise ConfigError(
            f"{source} is not {encoding.upper()} text: byte 0x{data[error.start]:02x} on line {line} cannot be "
            f"decoded (a Latin-1 or Windows-1252 file?). Save the file as UTF-8."
        ) from None
    return text


def parse_yaml(text: str, source: str) -> Any:
    """The YAML document in ``text``. A syntax error is raised as ConfigError from the ``yaml.YAMLError``; a
    document too large or too deep as a ConfigError of its own."""
    loader: yaml.SafeLoader | None = None
    try:
        stream = io.StringIO(text)
        stream.name = source  # so that YAML's error marks name the file, not "<unicode string>"
        loader = yaml.SafeLoader(stream)
        node = loader.get_single_node()
        if node is None:
            return None
        _check_size(node, source)
        return loader.construct_document(node)
    except yaml.YAMLError as error:
        raise ConfigError(f"{source} is not valid YAML: {error}") from error
    except RecursionError:
        raise ConfigError(f"{source} is nested too deeply to be a config (at most {MAX_DEPTH} levels).") from None
    except ValueError as error:  # e.g. an integer with more digits than Python converts
        raise ConfigError(f"{source}: a value cannot be read: {error}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _check_size(root: yaml.Node, source: str) -> None:
    """Refuse a node graph that expands to more than MAX_NODES values, nests deeper than MAX_DEPTH, or contains
    itself. Iterative, with each shared (aliased) node measured once, so the check is linear in the file."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_nodes: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        children = _children(node)
        if children_done:
            open_nodes.discard(key)
            size[key] = 1 + sum(size[id(child)] for child in children)
            depth[key] = 1 + max((depth[id(child)] for child in children), default=0)
            if size[key] > MAX_NODES:
                raise ConfigError(
                    f"{source} expands to more than {MAX_NODES:,} values (aliases (*name) repeating anchors "
                    f"(&name) multiply it); a config needs far fewer. Write the values out, or use fewer aliases."
                )
            if depth[key] > MAX_DEPTH:
                raise ConfigError(f"{source} is nested more than {MAX_DEPTH} levels deep; a config needs about six.")
            continue
        if key in size:
            continue
        if key in open_nodes:
            raise ConfigError(f"{source} contains an alias to an anchor that encloses it (a value that contains "
                              f"itself); a config cannot.")
        open_nodes.add(key)
        _check_unique_keys(node, source)
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in size)


def _check_unique_keys(node: yaml.Node, source: str) -> None:
    """Refuse a mapping that names a key twice: YAML loaders keep the last value without a word, so the first
    setting would be lost unseen."""
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[tuple[str, str], yaml.Mark] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == MERGE_TAG:
            continue
        first = seen.setdefault((key.tag, key.value), key.start_mark)
        if first is not key.start_mark:
            raise ConfigError(f"{source}: '{key.value}' is set twice in the same section (line {first.line + 1} and "
                              f"line {key.start_mark.line + 1}); the second would silently replace the first. "
                              f"Keep one.")


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []
