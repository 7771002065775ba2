"""A real pseudo-terminal for the tests of prompts (passphrases, confirmations)."""

from __future__ import annotations

import os
import pty
import select
import signal
import termios
import time


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
