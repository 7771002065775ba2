"""Everything the CLI shows: tables, JSON, sizes, progress bars, prompts.

rich is imported only when something is drawn with it: a backup run by cron or a
script (no terminal, or --json) starts without it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from typing import TYPE_CHECKING, Any

import click

from blockvault.extents import ExtentMap
from blockvault.pipeline.events import (
    Event,
    Noted,
    TaskAdvanced,
    TaskFinished,
    TaskStarted,
    Warned,
)

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID
    from rich.text import Text


@cache
def console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr)


def size(n: int | float) -> str:
    """Binary units, three significant digits: 4.00 GiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.3g} {unit}"
        value /= 1024
    return f"{value} TiB"


def _plain(value: Any) -> Any:
    if isinstance(value, ExtentMap):
        return value.to_pairs()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.hex()
    return value


def emit_json(value: Any) -> None:
    click.echo(json.dumps(_plain(value), indent=2, default=str))


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from rich.table import Table

    t = Table(title=title, title_justify="left", show_edge=False, header_style="bold")
    for col in columns:
        t.add_column(col, justify="right" if col.lower() in RIGHT else "left")
    for row in rows:
        t.add_row(*(_cell(v) for v in row))
    console().print(t)


def _cell(value: Any) -> Text:
    """A cell shown as written: not read as rich markup, control characters escaped
    (a host, source or file name read from a repository may hold terminal escapes)."""
    from rich.text import Text

    text = "" if value is None else str(value)
    return Text("".join(c if c.isprintable() else ascii(c)[1:-1] for c in text))


RIGHT = {"size", "used", "stored", "start", "bytes", "chunks", "new", "sector", "#", "number"}


def adapted(gpt_moved: bool, grown: str | None) -> str:
    """What a restore or clone changed to fit the target, as a tail for its summary line."""
    return ("; GPT backup moved to the end of the larger disk" if gpt_moved else "") + (
        f"; {grown}" if grown else ""
    )


def warn(message: str, out: Console | None = None) -> None:
    """``warning: message`` on stderr (or ``out``)."""
    from rich.text import Text

    say(Text.assemble(("warning:", "yellow"), " ", message), out)


def say(text: str | Text, out: Console | None = None) -> None:
    """One line on stderr (or ``out``) as written: not read as rich markup (a path may
    hold brackets) and not wrapped (scripts read it)."""
    (out or console(stderr=True)).print(text, highlight=False, markup=False, soft_wrap=True)


class ProgressReporter:
    """Renders pipeline events as progress bars (throughput, ETA) on a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.progress: Progress | None = _progress_bars() if enabled else None
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, event: Event) -> None:
        # messages go above the live bars when there are some: another console would tear them
        out = self.progress.console if self.progress else None
        if isinstance(event, Warned):
            warn(event.message, out)
        elif isinstance(event, Noted):
            say(event.message, out)
        elif self.progress is None:
            return
        elif isinstance(event, TaskStarted):
            self.tasks[event.task] = self.progress.add_task(event.task, total=event.total_bytes)
        elif isinstance(event, TaskAdvanced) and event.task in self.tasks:
            self.progress.advance(self.tasks[event.task], event.done_bytes)
        elif isinstance(event, TaskFinished) and event.task in self.tasks:
            task = self.tasks.pop(event.task)
            self.progress.update(task, completed=self.progress.tasks[task].total)


def _progress_bars() -> Progress:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console(stderr=True),
        transient=False,
    )


@contextmanager
def progress(json_output: bool) -> Iterator[ProgressReporter]:
    reporter = ProgressReporter(enabled=not json_output and sys.stderr.isatty())
    if reporter.progress is not None:
        with reporter.progress:
            yield reporter
    else:
        yield reporter


def confirmer(yes: bool) -> Any:
    """The library's confirm callback: --yes says yes; a terminal asks; else no."""

    def confirm(question: str) -> bool:
        if yes:
            return True
        if not sys.stdin.isatty():
            return False
        return click.confirm(f"{question}. Overwrite it?", default=False, err=True)

    return confirm
