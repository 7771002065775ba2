"""The rescue system's text menu on each console (screen and serial port).

Plain numbered choices and prompts on a text stream: no curses, so it works the
same on a VGA console, a serial line and a pipe (the tests drive it through one).
Each choice ends in a blockvault command line, shown before it runs. Every
choice that overwrites a disk names the target and goes on only when the target's
name is typed back exactly; anything else (or the end of input) cancels.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TextIO

from blockvault.rescue.runtime import LOG_PATH, RescueConfig, blockvault_argv, env_for

__all__ = ["CANCELLED", "TITLE", "Menu"]

TITLE: Final = "blockvault rescue"
CANCELLED: Final = "cancelled: nothing was written"
ANSWER_MAX: Final = 4096  # characters of one answer kept


class EndOfInput(Exception):
    """Nobody is left at the keyboard (the console closed, or a test's pipe ended)."""


@dataclass(frozen=True)
class Choice:
    key: str
    title: str
    action: Callable[[], None]


class Menu:
    """One console's menu. ``system`` runs the commands that leave blockvault
    (a shell, reboot, power off): its argv, as :func:`subprocess.call` takes it."""

    def __init__(
        self,
        config: RescueConfig,
        *,
        stdin: TextIO,
        stdout: TextIO,
        system: Callable[[list[str]], int] = subprocess.call,
    ) -> None:
        self.config = config
        self.stdin = stdin
        self.stdout = stdout
        self.system = system

    def choices(self) -> list[Choice]:
        items = [
            ("Restore a disk from a repository", self.restore_disk),
            ("Restore a partition from a repository", self.restore_partition),
        ]
        if self.config.images:
            items.append(("Restore a disk from an image on this stick", self.restore_image))
        items += [
            ("Restore onto other hardware (adapt)", self.restore_adapted),
            ("Clone a disk", self.clone),
            ("Receive a multicast deployment", self.cast_receive),
            ("List disks", self.list_disks),
            ("Open a shell", lambda: self._system(["/bin/bash", "-l"])),
            ("Reboot", lambda: self._system(["systemctl", "reboot"])),
            ("Power off", lambda: self._system(["systemctl", "poweroff"])),
        ]
        return [Choice(str(n), title, action) for n, (title, action) in enumerate(items, 1)]

    def run(self) -> None:
        """Show the menu until the input ends."""
        try:
            while True:
                self._show()
                answer = self.ask("Choose")
                chosen = next((c for c in self.choices() if c.key == answer), None)
                if chosen is None:
                    self.say(f"no choice {answer!r}")
                    continue
                chosen.action()
        except EndOfInput:
            self.say("")

    # the screens

    def _show(self) -> None:
        self.say("")
        self.say(f"== {TITLE} ==")
        status = _unattended_status()
        if status:
            self.say(f"unattended job: {status}")
        for choice in self.choices():
            self.say(f"  {choice.key}) {choice.title}")

    def restore_disk(self, partition: bool = False, adapt: bool = False) -> None:
        repo = self.ask("Repository (path, sftp://..., s3://...)", self.config.default_repo)
        if not repo:
            return
        self._blockvault(["-r", repo, "snapshots"])
        snapshot = self.ask("Snapshot", "latest")
        number = self.ask("Partition number") if partition else ""
        if partition and not number.isdigit():
            self.say("a partition number is a number")
            return
        self._blockvault(["disks"])
        target = self.ask("Target device (everything on it is overwritten)")
        if not target or not self.confirm(target):
            return
        part = ["-p", number] if partition else []
        adapted = ["--adapt"] if adapt else []
        self._blockvault(["-r", repo, "restore", *part, snapshot, target, "--yes", *adapted])

    def restore_partition(self) -> None:
        self.restore_disk(partition=True)

    def restore_adapted(self) -> None:
        """A disk restore, then the restored Linux system made to boot on this machine
        (its drivers, boot loader, firmware mode; ``restore --adapt``)."""
        self.restore_disk(adapt=True)

    def restore_image(self) -> None:
        for n, path in enumerate(self.config.images, 1):
            self.say(f"  {n}) {path.name}")
        answer = self.ask("Image", "1" if len(self.config.images) == 1 else None)
        if not answer.isdigit() or not 1 <= int(answer) <= len(self.config.images):
            self.say(f"no image {answer!r}")
            return
        image = str(self.config.images[int(answer) - 1])
        self._blockvault(["-r", image, "snapshots"])
        snapshot = self.ask("Snapshot", "latest")
        self._blockvault(["disks"])
        target = self.ask("Target device (everything on it is overwritten)")
        if not target or not self.confirm(target):
            return
        self._blockvault(["-r", image, "restore", snapshot, target, "--yes"])

    def clone(self) -> None:
        self._blockvault(["disks"])
        source = self.ask("Source device")
        target = self.ask("Target device (everything on it is overwritten)")
        if not source or not target or not self.confirm(target):
            return
        self._blockvault(["clone", source, target, "--yes"])

    def cast_receive(self) -> None:
        self._blockvault(["disks"])
        target = self.ask("Target device (everything on it is overwritten)")
        code = self.ask("Session code (as 'cast send' printed it)")
        session = self.ask("Session name", "default")
        if not target or not code or not self.confirm(target):
            return
        self._blockvault(["cast", "receive", "--code", code, "--session", session, "--yes", target])

    def list_disks(self) -> None:
        self._blockvault(["disks"])

    # talking to the person

    def say(self, line: str) -> None:
        self.stdout.write(line + "\n")
        self.stdout.flush()

    def ask(self, prompt: str, default: str | None = None) -> str:
        self.stdout.write(f"{prompt}{f' [{default}]' if default else ''}: ")
        self.stdout.flush()
        line = self.stdin.readline(ANSWER_MAX)
        if not line:
            raise EndOfInput
        answer = line.strip()
        return answer or default or ""

    def confirm(self, target: str) -> bool:
        """Whether the person types ``target`` back: the one guard before a disk is
        overwritten."""
        self.say(f"Everything on {target} will be overwritten.")
        typed = self.ask(f"Type {target} to go on, anything else cancels")
        if typed != target:
            self.say(CANCELLED)
            return False
        return True

    # running commands

    def _blockvault(self, args: list[str]) -> int:
        self.say(f"$ blockvault {shlex.join(args)}")
        status = subprocess.call(
            blockvault_argv(self.config, args),
            # a terminal lets blockvault ask (a passphrase); a pipe is the menu's alone
            stdin=self.stdin if self.stdin.isatty() else subprocess.DEVNULL,
            stdout=self.stdout,
            stderr=subprocess.STDOUT,
            env=env_for(self.config),
        )
        self.say("done" if status == 0 else f"failed (exit status {status})")
        return status

    def _system(self, argv: list[str]) -> None:
        self.say(f"$ {shlex.join(argv)}")
        self.system(argv)


def _unattended_status() -> str:
    """The last report line of an unattended job on this boot, if one ran."""
    try:
        lines = LOG_PATH.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    reports = [line for line in lines if line.startswith("BLOCKVAULT-RESCUE-")]
    return reports[-1][:200] if reports else ""
