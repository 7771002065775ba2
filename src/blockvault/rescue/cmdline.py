"""The kernel command line options that make the rescue system work unattended.

Glossary:

option
    ``blockvault.run="restore latest /dev/sda --yes"``: a blockvault command line,
    split like a shell would (no shell runs it); ``blockvault.cast=receive``: join a
    multicast deployment (``blockvault cast receive``; ``blockvault.target=DEV``
    names the disk, default the first one ``blockvault disks`` lists);
    ``blockvault.code=CODE`` and ``blockvault.session=NAME`` as ``cast receive``
    takes them; ``blockvault.after=reboot|poweroff|shell``: what follows the job (default
    ``shell``: the menu stays, nobody is surprised by a reboot loop).
job
    What one boot runs: the blockvault arguments, and what comes after.

The kernel splits its command line at spaces outside double quotes and keeps the
quotes it saw (``/proc/cmdline`` shows them); a value wrapped in quotes loses them,
as in the kernel's own ``next_arg``. The line comes from whoever controls the boot
loader, a PXE server or the stick: values are bounded, and only blockvault itself
is ever run with them.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Final, Literal

from blockvault.errors import RescueOptionError

__all__ = [
    "AFTER",
    "AUTO_TARGET",
    "PREFIX",
    "Job",
    "job_from_cmdline",
    "kernel_params",
    "kernel_words",
]

After = Literal["reboot", "poweroff", "shell"]
AFTER: Final[tuple[After, ...]] = ("reboot", "poweroff", "shell")
PREFIX: Final = "blockvault."
CAST_ACTIONS: Final = ("receive",)
CMDLINE_MAX: Final = 64 * 1024  # COMMAND_LINE_SIZE is 2048 on x86; allow room, never more
NOT_FOR_RESCUE: Final = frozenset({"rescue", "agent", "demo", "boot"})
KNOWN: Final = frozenset({"run", "cast", "target", "code", "session", "after"})
AUTO_TARGET: Final = "auto"  # cast receive onto the first disk the rescue system sees


@dataclass(frozen=True)
class Job:
    """What an unattended boot runs: ``blockvault ARGS``, then ``after``."""

    args: tuple[str, ...]
    after: After


def kernel_words(cmdline: str) -> list[str]:
    """The command line cut where the kernel cuts it: at spaces outside double
    quotes; the quotes stay in the words."""
    if len(cmdline) > CMDLINE_MAX:
        raise RescueOptionError("longer than 64 KiB", option="(all)")
    words: list[str] = []
    word: list[str] = []
    quoted = False
    for ch in cmdline.strip():
        if ch == '"':
            quoted = not quoted
        if ch.isspace() and not quoted:
            if word:
                words.append("".join(word))
                word = []
            continue
        word.append(ch)
    if word:  # an unclosed quote runs to the end, as in the kernel
        words.append("".join(word))
    return words


def kernel_params(cmdline: str) -> list[tuple[str, str | None]]:
    """``(name, value)`` pairs as the kernel parses them (``value`` is None for a bare
    word); quotes wrapping a value are removed, as ``next_arg`` does."""
    return [_param(word) for word in kernel_words(cmdline)]


def _param(word: str) -> tuple[str, str | None]:
    name, eq, value = word.partition("=")
    if not eq:
        return name.strip('"'), None
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        value = value[1:-1]
    elif name.startswith('"'):  # the kernel also accepts "name=value with spaces"
        name, value = name[1:], value.removesuffix('"')
    return name, value


def console_devices(cmdline: str) -> list[str]:
    """The device of each ``console=`` option (``ttyS0,115200n8`` -> ``/dev/ttyS0``),
    in order; names that are not plain device names are left out."""
    names = [
        value.split(",", 1)[0]
        for name, value in kernel_params(cmdline)
        if name == "console" and value
    ]
    return [f"/dev/{n}" for n in names if n.isalnum()]


def job_from_cmdline(cmdline: str) -> Job | None:
    """The unattended job the command line asks for, or None when it asks for none
    (the menu then waits for someone). Unknown ``blockvault.`` options, a bad
    ``after``, both ``run`` and ``cast``, or a ``run`` that is not a blockvault
    command line raise :class:`RescueOptionError`."""
    options: dict[str, str] = {}
    for name, value in kernel_params(cmdline):
        if not name.startswith(PREFIX):
            continue
        key = name.removeprefix(PREFIX)
        if key not in KNOWN:
            raise RescueOptionError(f"unknown; known: {', '.join(sorted(KNOWN))}", option=name)
        if value is None or not value.strip():
            raise RescueOptionError("needs a value", option=name)
        options[key] = value
    after = options.get("after", "shell")
    if after not in AFTER:
        raise RescueOptionError(f"{after!r}: use one of {', '.join(AFTER)}", option="after")
    if "run" in options and "cast" in options:
        raise RescueOptionError("give blockvault.run or blockvault.cast, not both", option="run")
    if "run" in options:
        args = _split(options["run"])
    elif "cast" in options:
        if options["cast"] not in CAST_ACTIONS:
            raise RescueOptionError(f"{options['cast']!r}: use receive", option="cast")
        extra = [(f"--{k}", options[k]) for k in ("code", "session") if k in options]
        flags = tuple(word for pair in extra for word in pair)
        args = ("cast", "receive", "--yes", *flags, options.get("target", AUTO_TARGET))
    elif options.keys() & {"target", "code", "session"}:
        raise RescueOptionError("only goes with blockvault.cast", option="target/code/session")
    else:
        if "after" in options:
            raise RescueOptionError("without blockvault.run or blockvault.cast", option="after")
        return None
    return Job(args, after)


def _split(value: str) -> tuple[str, ...]:
    try:
        args = tuple(shlex.split(value))
    except ValueError as exc:
        raise RescueOptionError(f"cannot split {value!r}: {exc}", option="run") from None
    if not args:
        raise RescueOptionError("is empty", option="run")
    if args[0] in NOT_FOR_RESCUE:
        raise RescueOptionError(f"{args[0]!r} is not for a rescue boot", option="run")
    return args
