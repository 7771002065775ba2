"""Running blockvault as a user would, for the CLI tests: without a terminal (and
without our BLOCKVAULT_ variables), or on a real pseudo-terminal for prompts."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import termios
import time
from pathlib import Path


def run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """blockvault without a terminal and without any BLOCKVAULT_ variable but ``env``'s."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BLOCKVAULT_")}
    return subprocess.run(
        ["blockvault", *map(str, args)],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        stdin=subprocess.DEVNULL,
        check=False,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout


def one_line_error(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """The one line on stderr of a command that failed with ``code``, holding ``words``."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def converse(
    args: list[str], answers: list[str], *, hidden: bool = True, timeout: float = 30.0
) -> tuple[int, str]:
    """Run blockvault on a real terminal; after each prompt ending in ':' (``hidden``:
    once the terminal stops echoing, as a person would see it) type the next answer."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOCKVAULT_")}
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal
        os.execvpe("blockvault", ["blockvault", *args], env)
    output = b""
    pending = list(answers)
    answered_at = 0  # length of the output when the last answer was typed
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not data:
                    break
                output += data
            prompted = len(output) > answered_at and output.rstrip().endswith(b":")
            echoing = termios.tcgetattr(fd)[3] & termios.ECHO
            if pending and prompted and not (hidden and echoing):
                os.write(fd, (pending.pop(0) + "\n").encode())
                answered_at = len(output)
    finally:
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)  # our own child, stuck: fail instead of hanging
        _, status = os.waitpid(pid, 0)  # otherwise it closed the terminal: it is exiting
        os.close(fd)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")
