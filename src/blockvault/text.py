"""Words shown to people, at the bottom layer so that library messages, errors and
the CLI agree: a count and its noun (``plural``), and a name that cannot drive a
terminal (``shown``).

A name read from a snapshot, an image or a peer is hostile until shown: a file
name may hold ``ESC [ 2 J`` or a bidi override, and printed raw it would clear or
rewrite the user's screen. Every message that names such a thing goes through
``shown``; :class:`~blockvault.errors.BlockvaultError` does it for its whole line.
"""

from __future__ import annotations

import re

__all__ = ["agree", "command_word", "plural", "shown"]


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``1 file``, ``2 files``, ``0 passes``, ``3 entries``: a count and its noun, agreeing."""
    return f"{count} {agree(count, noun, plural_form)}"


def agree(count: int, noun: str, plural_form: str | None = None) -> str:
    """``noun`` as ``count`` of it is written: ``partition`` for 1, ``partitions``
    else (for a list named after its noun: "partitions 1, 2 must shrink")."""
    if count == 1:
        return noun
    if plural_form is not None:
        return plural_form
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in tuple("aeiou"):
        return noun[:-1] + "ies"
    return noun + "s"


def shown(text: str) -> str:
    """``text`` safe for a terminal and one line: control and format characters (ESC,
    newline, NUL, bidi overrides, surrogates of undecodable bytes) are written as
    ``repr`` writes them (``\\x1b``, ``\\n``, ``\\u202e``); the rest is left as is."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


_PLAIN_WORD = re.compile(r"[\w@%+=:,./-]+")  # what a shell reads as one word, as is


def command_word(text: str) -> str:
    """``text`` as one word of a command line a user can paste into a shell: as is when
    plain, else in double quotes with ``" \\ $ `` and backquote escaped. Double, not
    single, quotes: messages wrap a whole suggested command in single quotes."""
    if _PLAIN_WORD.fullmatch(text):
        return text
    return '"' + re.sub(r'(["\\$`])', r"\\\1", text) + '"'
