"""Words shown to people: counts agree with their nouns, hostile names cannot drive
a terminal, and an error naming such a name says it escaped on one line."""

from __future__ import annotations

import io
import subprocess

import pytest

from blockvault.errors import PartitionNotFound, PathNotFound, TargetNotEmpty, UnsafeName
from blockvault.text import agree, command_word, plural, shown


@pytest.mark.parametrize(
    ("count", "noun", "said"),
    [
        (0, "file", "0 files"),
        (1, "file", "1 file"),
        (1, "pass", "1 pass"),
        (2, "pass", "2 passes"),
        (3, "entry", "3 entries"),
        (2, "directory", "2 directories"),
        (2, "key", "2 keys"),
        (2, "index", "2 indexes"),
        (2, "day", "2 days"),
        (1, "new chunk", "1 new chunk"),
    ],
)
def test_plural(count: int, noun: str, said: str) -> None:
    assert plural(count, noun) == said


def test_agree_names_a_list_and_takes_an_irregular_form() -> None:
    assert agree(1, "partition") == "partition"
    assert agree(2, "partition") == "partitions"
    assert plural(2, "child", "children") == "2 children"
    assert plural(1, "child", "children") == "1 child"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("plain name.txt", "plain name.txt"),
        ("red\x1b[31m", "red\\x1b[31m"),
        ("clear\x1b[2J\x1b[H", "clear\\x1b[2J\\x1b[H"),
        ("two\nlines", "two\\nlines"),
        ("nul\0byte", "nul\\x00byte"),
        ("bell\x07", "bell\\x07"),
        ("csi\x9b31m", "csi\\x9b31m"),  # the 8-bit CSI some terminals obey
        ("gpj.\u202eexe", "gpj.\\u202eexe"),  # a bidi override that reverses what follows
        ("undecodable \udcff", "undecodable \\udcff"),  # os.fsdecode's surrogate escape
        ("été ünïcode 名前", "été ünïcode 名前"),
    ],
)
def test_shown_escapes_what_a_terminal_would_obey(name: str, expected: str) -> None:
    assert shown(name) == expected
    assert shown(name).isprintable()


def test_errors_show_hostile_names_escaped_and_keep_them_exact() -> None:
    path = "/restore/red\x1b[31m\nerror: fake"
    exc = TargetNotEmpty("it exists", path=path)
    assert str(exc) == (
        "target /restore/red\\x1b[31m\\nerror: fake is not empty (it exists); "
        "pass --yes to overwrite it"
    )
    assert exc.fields["path"] == path  # for callers that need the name itself
    missing = PathNotFound("does not exist", path="/\x1b]0;title\x07", partition=1, snapshot="ab")
    assert str(missing) == "/\\x1b]0;title\\x07 does not exist in partition 1 of snapshot ab"
    # repr in a template already escapes: the name is not escaped twice
    assert str(UnsafeName("no", path="a\x1bb")) == "'a\\x1bb': no; skipped"


@pytest.mark.parametrize(
    "word",
    ["/srv/repo", "sftp://backup@host:2222/vault", "/tmp/repo with space", 'say "hi"', "a\\b", ""],
)
def test_command_word_is_one_shell_word(word: str) -> None:
    said = subprocess.run(
        ["sh", "-c", f"printf %s {command_word(word)}"], capture_output=True, text=True, check=True
    )
    assert said.stdout == word


def test_command_word_keeps_a_shell_from_expanding() -> None:
    for word in ("$HOME", "`id`", "a;b", "*", "~"):
        said = subprocess.run(
            ["sh", "-c", f"printf %s {command_word(word)}"], capture_output=True, text=True
        )
        assert said.stdout == word, word


def test_a_suggested_command_quotes_its_repository() -> None:
    exc = PartitionNotFound("", snapshot="0123456789ab", partition=3, repo="/srv/my vault")
    assert "'blockvault -r \"/srv/my vault\" info 0123456789ab'" in str(exc)
    assert exc.fields["repo"] == "/srv/my vault"


def test_the_cli_shows_library_warnings_and_notes_escaped() -> None:
    """Warned and Noted events reach the terminal through warn and say."""
    from rich.console import Console

    from blockvault.cli import render

    out = io.StringIO()
    screen = Console(file=out, width=200)
    render.warn("/etc/\x1b[2Jgone skipped", screen)
    render.say("line one\nforged: line two", screen)
    assert out.getvalue().splitlines() == [
        "warning: /etc/\\x1b[2Jgone skipped",
        "line one\\nforged: line two",
    ]
