"""The command line's surface as a new user meets it: every command documented in the
user guide, every option explained in its --help, one exit-code table everywhere.

Oracles: the click group itself (what really exists), ``blockvault --help`` as a
subprocess prints it, docs/user-guide.md as written, and the error classes.
"""

from __future__ import annotations

import inspect
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import click

from blockvault import errors
from blockvault.cli.main import cli

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "user-guide.md"


def section(title: str) -> str:
    text = GUIDE.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def table_rows(text: str) -> list[list[str]]:
    """The cells of a markdown table's body rows (header and rule left out)."""
    rows = [line for line in text.splitlines() if line.startswith("|")]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", r)[1:-1]] for r in rows[2:]]


def commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, click.Command]]:
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        yield " ".join((*path, name)), command
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))


def test_every_option_of_every_command_is_explained() -> None:
    unexplained = [
        f"{name} {'/'.join(param.opts)}"
        for name, command in [("blockvault", cli), *commands(cli)]
        for param in command.params
        if isinstance(param, click.Option) and not param.hidden and not (param.help or "").strip()
    ]
    assert unexplained == []


def test_every_command_says_what_it_does_and_names_its_arguments() -> None:
    for name, command in commands(cli):
        text = command.help or ""
        assert text.strip(), f"{name} has no help"
        for param in command.params:
            if isinstance(param, click.Argument):
                # the help names each argument as its usage line spells it
                word = (param.metavar or param.name or "").upper()
                assert re.split(r"[\[:/]", word)[0] in text, f"{name}: {word} not explained"


def test_user_guide_lists_every_command() -> None:
    listed = set()
    for cells in table_rows(section("Commands")):
        for usage in re.findall(r"`blockvault ([^`]*)`", cells[0]):
            words = usage.split()
            while words and words[0].startswith("-"):  # global options: -r REPO
                words = words[2:]
            listed.add(words[0])
            if words[0] in ("key", "cast", "plan", "rescue", "pxe") or words[:2] in (
                ["agent", "install"],
                ["agent", "uninstall"],
            ):
                listed.add(f"{words[0]} {words[1]}")
    assert listed == {name for name, _ in commands(cli)}


def test_one_exit_code_table_in_errors_help_and_user_guide() -> None:
    def plain(text: str) -> str:
        return " ".join(text.replace("`", "").split())

    table = {code: plain(text) for code, text in errors.EXIT_CODES.items()}
    guide = {int(code): plain(text) for code, text in table_rows(section("Exit codes"))}
    assert guide == table
    shown = subprocess.run(
        ["blockvault", "--help"], capture_output=True, text=True, check=True
    ).stdout
    epilog = shown[shown.index("Exit codes:") :]
    helped = {
        int(m.group(1)): plain(m.group(2)) for m in re.finditer(r"^\s+(\d+)\s+(.+)$", epilog, re.M)
    }
    assert helped == table
    # every error class exits with a code of the table, and the tree drawn in
    # errors.py's docstring says the truth where it names a code
    classes = {
        name: cls
        for name, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.BlockvaultError)
    }
    for cls in classes.values():
        assert cls.exit_code in table, cls
    drawn = re.findall(r"(\w+)\s+exit (\d+)", errors.__doc__ or "")
    assert drawn
    for name, code in drawn:
        assert classes[name].exit_code == int(code), name
    signals = {code for code in table if code > 128}  # 128 + SIGHUP, SIGINT, SIGPIPE, SIGTERM
    assert signals == {129, errors.EXIT_INTERRUPTED, errors.EXIT_STDOUT_CLOSED, 143}
    # a class may exit 128 + N for a signal (CastInterrupted), never with a code outside
    assert {cls.exit_code for cls in classes.values()} - signals == set(table) - {
        0,
        errors.EXIT_INTERNAL,
        *signals,
    }
