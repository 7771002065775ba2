"""The LVM2 metadata text ("Text Format Volume Group"), parsed into nested dicts.

Grammar (lib/config/config.c)::

    section := NAME "{" item* "}"
    item    := section | NAME "=" value
    value   := INTEGER | FLOAT | STRING | "[" (value ("," value)*)? "]"

``#`` starts a comment outside strings; strings are double-quoted with backslash
escapes. The text comes from a disk and may be hostile: its length is bounded by the
caller, sections nest at most ``MAX_DEPTH`` deep and a list holds at most
``MAX_LIST`` values, so parsing is linear in the text and cannot recurse without end.
"""

from __future__ import annotations

import re
from typing import Union

from blockvault.errors import FilesystemError

__all__ = ["Config", "Value", "parse"]

Value = Union[int, float, str, list["Value"], "Config"]
Config = dict[str, Value]

MAX_DEPTH = 16
MAX_LIST = 65536

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<comment>\#[^\n]*)
      | (?P<string>"(?:[^"\\]|\\.)*")
      | (?P<number>-?\d+(?:\.\d+)?)(?![\w.+-])
      | (?P<name>[A-Za-z0-9_.+\-]+)
      | (?P<punct>[{}\[\]=,])
    )""",
    re.VERBOSE | re.DOTALL,
)


def _error(detail: str) -> FilesystemError:
    return FilesystemError(detail, fs="lvm2", where="metadata text")


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            if text[pos:].strip() == "":
                break
            raise _error(f"unexpected {text[pos : pos + 20]!r} at character {pos}")
        pos = match.end()
        kind = match.lastgroup
        assert kind is not None
        if kind != "comment":
            tokens.append((kind, match.group(kind)))
    return tokens


def parse(text: str) -> Config:
    """The top-level items of ``text``; ``FilesystemError`` when it is not LVM2 text."""
    tokens = _tokens(text)
    pos = 0

    def expect(kind: str, value: str | None = None) -> str:
        nonlocal pos
        if pos >= len(tokens):
            raise _error(f"text ends where {value or kind} was expected")
        got_kind, got = tokens[pos]
        if got_kind != kind or (value is not None and got != value):
            raise _error(f"{got!r} where {value or kind} was expected")
        pos += 1
        return got

    def peek() -> str | None:
        return tokens[pos][1] if pos < len(tokens) else None

    def value() -> Value:
        nonlocal pos
        if peek() == "[":
            pos += 1
            items: list[Value] = []
            while peek() != "]":
                if items:
                    expect("punct", ",")
                if len(items) >= MAX_LIST:
                    raise _error(f"a list of more than {MAX_LIST} values")
                items.append(value())
            pos += 1
            return items
        if pos >= len(tokens):
            raise _error("text ends where a value was expected")
        kind, raw = tokens[pos]
        pos += 1
        if kind == "string":
            return re.sub(r"\\(.)", r"\1", raw[1:-1], flags=re.DOTALL)
        if kind == "number":
            return float(raw) if "." in raw else int(raw)
        raise _error(f"{raw!r} where a value was expected")

    def items(depth: int, closing: str | None) -> Config:
        nonlocal pos
        if depth > MAX_DEPTH:
            raise _error(f"sections nest deeper than {MAX_DEPTH}")
        section: Config = {}
        while peek() != closing:
            if peek() is None:
                raise _error("text ends inside a section")
            kind, name = tokens[pos]
            if kind not in ("name", "number"):
                raise _error(f"{name!r} where a name was expected")
            pos += 1
            if peek() == "{":
                pos += 1
                section[name] = items(depth + 1, "}")
                pos += 1
            else:
                expect("punct", "=")
                section[name] = value()
        return section

    return items(0, None)
