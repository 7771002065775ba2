"""Charts drawn on the server as inline SVG: no chart library, no script, readable in
dark mode (the style sheet colours them) and by screen readers (a title and a table
of the same figures beside it).

``daily_backups`` sums the last days' backups in the database (one row per day, so
the overview stays fast with a hundred thousand runs); ``bars_and_line`` draws
bytes stored per day as bars and the mean backup duration as a line.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final

from markupsafe import Markup, escape
from sqlalchemy import ColumnElement, Float, cast, func, select
from sqlalchemy.orm import Session

from blockvault.center.models import Run

__all__ = ["Day", "bars_and_line", "daily_backups", "human_bytes", "human_duration"]

WIDTH: Final = 720
HEIGHT: Final = 220
PAD_LEFT: Final = 64
PAD_RIGHT: Final = 56
PAD_TOP: Final = 12
PAD_BOTTOM: Final = 28


@dataclass(frozen=True)
class Day:
    day: date
    stored: int  # bytes the day's backups added to repositories
    runs: int
    seconds: float | None  # mean duration of the day's finished backups


def human_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d"


def _seconds_between(session: Session) -> ColumnElement[Any]:
    if session.get_bind().dialect.name == "sqlite":
        return (func.julianday(Run.ended) - func.julianday(Run.started)) * 86400.0
    return func.extract("epoch", Run.ended - Run.started)


def daily_backups(
    session: Session, now: datetime, days: int = 30, hosts: list[int] | None = None
) -> list[Day]:
    """One ``Day`` for each of the last ``days`` days (UTC, by the center's receipt
    time), empty days included; ``hosts`` limits it to those hosts."""
    first = (now - timedelta(days=days - 1)).date()
    day = func.date(Run.received)
    query = (
        select(
            day,
            func.coalesce(func.sum(Run.bytes_stored), 0),
            func.count(),
            func.avg(cast(_seconds_between(session), Float)),
        )
        .where(Run.kind == "backup", Run.received >= datetime.combine(first, time(0), UTC))
        .group_by(day)
    )
    if hosts is not None:
        query = query.where(Run.host_id.in_(hosts))
    found = {str(d): (int(s), int(n), a) for d, s, n, a in session.execute(query)}
    out = []
    for offset in range(days):
        d = first + timedelta(days=offset)
        stored, runs, mean = found.get(d.isoformat(), (0, 0, None))
        out.append(Day(d, stored, runs, None if mean is None else float(mean)))
    return out


def bars_and_line(days: list[Day], title: str) -> Markup:
    """An SVG chart of ``days``: stored bytes as bars (left axis), mean backup
    duration as a line (right axis)."""
    inner_w = WIDTH - PAD_LEFT - PAD_RIGHT
    inner_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    top_bytes = max([d.stored for d in days] + [1])
    top_seconds = max([d.seconds or 0 for d in days] + [1])
    step = inner_w / max(len(days), 1)
    base = PAD_TOP + inner_h
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
        f'<line class="axis" x1="{PAD_LEFT}" y1="{base}" x2="{WIDTH - PAD_RIGHT}" y2="{base}"/>',
    ]
    for fraction in (0.5, 1.0):
        y = base - inner_h * fraction
        parts.append(
            f'<line class="axis" x1="{PAD_LEFT}" y1="{y:.1f}" x2="{WIDTH - PAD_RIGHT}" '
            f'y2="{y:.1f}" stroke-dasharray="3 4"/>'
            f'<text x="{PAD_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(human_bytes(top_bytes * fraction))}</text>"
            f'<text x="{WIDTH - PAD_RIGHT + 6}" y="{y + 4:.1f}">'
            f"{escape(human_duration(top_seconds * fraction))}</text>"
        )
    points = []
    for i, d in enumerate(days):
        x = PAD_LEFT + i * step
        h = inner_h * d.stored / top_bytes
        label = f"{d.day}: {human_bytes(d.stored)} stored, {d.runs} backups"
        parts.append(
            f'<rect class="bar" x="{x + step * 0.15:.1f}" y="{base - h:.1f}" '
            f'width="{step * 0.7:.1f}" height="{h:.1f}"><title>{escape(label)}</title></rect>'
        )
        if d.seconds is not None:
            y = base - inner_h * d.seconds / top_seconds
            points.append((x + step / 2, y, d))
        if (len(days) - 1 - i) % 7 == 0:  # weekly, counted back from today
            parts.append(
                f'<text x="{x + step / 2:.1f}" y="{HEIGHT - 8}" text-anchor="middle">'
                f"{d.day:%b %d}</text>"
            )
    if len(points) > 1:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in points)
        parts.append(f'<polyline class="line" points="{path}"/>')
    for x, y, d in points:
        label = f"{d.day}: mean backup {human_duration(d.seconds)}"
        parts.append(
            f'<circle class="dot" cx="{x:.1f}" cy="{y:.1f}" r="3">'
            f"<title>{escape(label)}</title></circle>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))
