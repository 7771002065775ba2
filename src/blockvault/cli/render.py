"""Everything the CLI shows: tables, JSON, sizes, progress bars, prompts.

rich is imported only when something is drawn with it: a backup run by cron or a
script (no terminal, or --json) starts without it.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from typing import TYPE_CHECKING, Any

import click

from blockvault.events import (
    Event,
    Noted,
    TaskAdvanced,
    TaskFinished,
    TaskStarted,
    Warned,
)
from blockvault.extents import ExtentMap
from blockvault.repo.manifest import Snapshot
from blockvault.text import plural as plural  # commands write render.plural
from blockvault.text import shown

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID
    from rich.text import Text

    from blockvault.disk.tree import StackNode


@cache
def console(stderr: bool = False) -> Console:
    from rich.console import Console

    class Quiet(Console):
        def on_broken_pipe(self) -> None:
            # rich would exit by itself; cli/main.py decides for every command
            raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))

    return Quiet(stderr=stderr)


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


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types, as ``emit_json`` would print it."""
    return json.loads(json.dumps(_plain(value), default=str))


def emit_json(value: Any) -> None:
    click.echo(json.dumps(_plain(value), indent=2, default=str))


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A rich table that a narrow terminal never cuts: essential columns (ids, devices,
    numbers, sizes) keep their widest cell on one line, the others fold, each at least
    FOLDED_MIN_WIDTH wide. A terminal too narrow even for that gets the table at the
    width it needs (the terminal wraps the lines) rather than one with columns lost:
    rich would squeeze folding columns to nothing."""
    from rich.cells import cell_len
    from rich.table import Table
    from rich.text import Text

    # a label or name may come from a hostile image: shown escaped, never drawn
    cells = [["" if v is None else shown(str(v)) for v in row] for row in rows]
    essential = [col.lower() in ESSENTIAL for col in columns]
    least = []  # the narrowest each column may be
    for k, col in enumerate(columns):
        widest = max(cell_len(text) for text in [col, *(row[k] for row in cells)])
        least.append(widest if essential[k] else min(widest, max(len(col), FOLDED_MIN_WIDTH)))
    needed = sum(least) + 3 * len(columns) - 1  # one space either side, one rule between
    out = console()
    narrow = out.width
    fixed = narrow < needed
    t = Table(title=title, title_justify="left", show_edge=False, header_style="bold")
    for k, col in enumerate(columns):
        t.add_column(
            col,
            justify="right" if col.lower() in RIGHT else "left",
            no_wrap=essential[k],
            overflow="fold",
            min_width=least[k],
            width=least[k] if fixed else None,
        )
    for row in cells:
        t.add_row(*(Text(text) for text in row))  # as written, never read as markup
    out.width = max(narrow, needed)
    try:
        out.print(t, crop=False)
    finally:
        out.width = narrow


RIGHT = {
    *("size", "used", "stored", "start", "bytes", "sector", "#", "number"),
    *("chunks", "new", "holes", "unique"),
}
FOLDED_MIN_WIDTH = 8  # a folded column narrower than this is hard to read
# never wrapped or cut: what a user types back (ids, devices, numbers) or compares (sizes)
ESSENTIAL = RIGHT | {"id", "snapshot", "device", "region", "time"}


def adapted(gpt_moved: bool, grown: str | None) -> str:
    """What a restore or clone changed to fit the target, as a tail for its summary line."""
    return ("; GPT backup moved to the end of the larger disk" if gpt_moved else "") + (
        f"; {grown}" if grown else ""
    )


LIVE_SHOWN = {
    "lvm-snapshot": "from an LVM snapshot",
    "unsafe-reread": "re-read, not crash-consistent",
}


def live(snapshot: Snapshot) -> str:
    """How a source in use was read, for people ("" when it was not in use)."""
    return LIVE_SHOWN.get(snapshot.live, shown(snapshot.live))


def stack(node: StackNode) -> None:
    """A disk's stack (disk/tree.py) as an indented tree."""
    from rich.tree import Tree

    def label(n: StackNode) -> str:
        if n.kind == "disk":
            table = f"{n.filesystem} table" if n.filesystem != "none" else "no partition table"
            return f"{shown(n.name)}: {size(n.size)}, {table}, {size(n.used_bytes)} used"
        words = [shown(n.name), n.kind, size(n.size)]
        if n.filesystem:
            words.append(shown(n.filesystem))
        if n.label:
            words.append(repr(shown(n.label)))
        if n.used_bytes:
            words.append(f"{size(n.used_bytes)} used")
        if n.mounts:
            words.append("on " + ", ".join(shown(m) for m in n.mounts))
        if n.note:
            words.append(f"({shown(n.note)})")
        return "  ".join(words)

    def grow(tree: Tree, n: StackNode) -> None:
        for child in n.children:
            grow(tree.add(label(child), highlight=False), child)

    root = Tree(label(node), highlight=False)
    grow(root, node)
    console().print(root)


def warn(message: str, out: Console | None = None) -> None:
    """``warning: message`` on stderr (or ``out``)."""
    from rich.text import Text

    say(Text.assemble(("warning:", "yellow"), " ", shown(message)), out)


def say(text: str | Text, out: Console | None = None) -> None:
    """One line on stderr (or ``out``) as written: not read as rich markup (a path may
    hold brackets) and not wrapped (scripts read it). A library message may name
    things from a hostile image: its control characters are shown escaped."""
    line = shown(text) if isinstance(text, str) else text
    (out or console(stderr=True)).print(line, highlight=False, markup=False, soft_wrap=True)


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


# the live bars being drawn now: a prompt pauses them (while they run, rich owns stderr
# and would read "[y/N]" as markup and redraw over the question)
_LIVE: list[Progress] = []


@contextmanager
def progress(json_output: bool) -> Iterator[ProgressReporter]:
    reporter = ProgressReporter(enabled=not json_output and sys.stderr.isatty())
    if reporter.progress is not None:
        with reporter.progress:
            _LIVE.append(reporter.progress)
            try:
                yield reporter
            finally:
                _LIVE.remove(reporter.progress)
    else:
        yield reporter


def confirmer(yes: bool) -> Callable[[str], bool]:
    """The library's confirm callback: --yes says yes; a terminal asks; else no."""

    def confirm(question: str) -> bool:
        return yes or ask_yes_no(f"{question}. Overwrite it?")

    return confirm


def ask_yes_no(question: str) -> bool:
    """Ask ``question [y/N]`` on the terminal; Enter, end of input or no terminal
    mean no, Ctrl-C interrupts. The one prompt every confirmation goes through."""
    if not sys.stdin.isatty():
        return False
    for bars in _LIVE:
        bars.stop()
    try:
        return click.confirm(question, default=False, err=True)
    except click.Abort as exc:
        if isinstance(exc.__context__, KeyboardInterrupt):
            raise KeyboardInterrupt from None  # Ctrl-C stops the command (exit 130)
        click.echo(err=True)  # Ctrl-D: no
        return False
    finally:
        for bars in _LIVE:
            bars.start()
