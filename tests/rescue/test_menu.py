"""The rescue menu and the unattended job, run as the rescue system runs them: real
processes (``python3 -m blockvault.rescue``) driving the real blockvault CLI, with an
image file standing in for the disk they overwrite."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from blockvault.rescue.runtime import MEDIUM_ENV
from blockvault.rescue.unattended import Consoles
from tests.conftest import blockvault

MiB = 1024 * 1024


@pytest.fixture
def stored(tmp_path: Path) -> tuple[Path, Path]:
    """A repository holding one snapshot of a 4 MiB disk image of random bytes."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(os.urandom(4 * MiB))
    repo = tmp_path / "repo"
    assert blockvault("-r", repo, "init").returncode == 0
    done = blockvault("-r", repo, "backup", "--raw", disk)
    assert done.returncode == 0, done.stderr
    return disk, repo


def rescue(
    program: str, medium: Path, *args: str, input: str = ""
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "BLOCKVAULT_REPO"}
    return subprocess.run(
        [sys.executable, "-m", "blockvault.rescue", program, *args],
        input=input,
        capture_output=True,
        text=True,
        env={**env, MEDIUM_ENV: str(medium)},
        timeout=120,
        check=False,
    )


def preset(medium: Path, **config: object) -> Path:
    medium.mkdir()
    (medium / "rescue.json").write_text(json.dumps(config))
    return medium


def test_menu_restores_only_after_the_target_is_typed_back(
    tmp_path: Path, stored: tuple[Path, Path]
) -> None:
    disk, repo = stored
    target = tmp_path / "target.img"
    medium = preset(tmp_path / "medium", repo=str(repo))
    wrong = rescue("menu", medium, input=f"1\n\nlatest\n{target}\nyes\n")
    assert "cancelled: nothing was written" in wrong.stdout
    assert not target.exists()
    assert "1) Restore a disk from a repository" in wrong.stdout
    assert f"[{repo}]" in wrong.stdout  # the preset repository is the default answer
    typed = rescue("menu", medium, input=f"1\n\n\n{target}\n{target}\n")
    assert f"$ blockvault -r {repo} restore latest {target} --yes" in typed.stdout
    assert "done" in typed.stdout.splitlines()
    assert target.read_bytes() == disk.read_bytes()
    assert typed.returncode == 0  # the end of input leaves the menu quietly


def test_menu_restores_an_image_on_the_stick(tmp_path: Path, stored: tuple[Path, Path]) -> None:
    disk, repo = stored
    medium = preset(tmp_path / "medium", images=["images/disk.bvi"])
    (medium / "images").mkdir()
    done = blockvault("-r", repo, "export", "--format", "bvi", "latest", medium / "images/disk.bvi")
    assert done.returncode == 0, done.stderr
    restored = tmp_path / "restored.img"
    out = rescue("menu", medium, input=f"3\n\n\n{restored}\n{restored}\n").stdout
    assert "3) Restore a disk from an image on this stick" in out
    assert "1) disk.bvi" in out
    assert restored.read_bytes() == disk.read_bytes()


def test_menu_names_a_wrong_choice_and_a_failed_command(tmp_path: Path) -> None:
    medium = preset(tmp_path / "medium")
    out = rescue("menu", medium, input=f"42\n1\n{tmp_path / 'nothing'}\nlatest\n").stdout
    assert "no choice '42'" in out
    assert "failed (exit status 3)" in out  # snapshots of a missing repository


def test_a_preset_path_that_leaves_the_medium_is_refused(tmp_path: Path) -> None:
    medium = preset(tmp_path / "medium", password_file="../../etc/shadow")
    done = rescue("menu", medium)
    assert done.returncode == 1
    assert "leaves the medium folder" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_unattended_restore_reports_ok_and_logs(tmp_path: Path, stored: tuple[Path, Path]) -> None:
    disk, repo = stored
    target, log = tmp_path / "target.img", tmp_path / "rescue.log"
    medium = preset(tmp_path / "medium", repo=str(repo))
    line = f'boot=live blockvault.run="restore latest {target} --yes" blockvault.after=shell'
    done = rescue("unattended", medium, "--cmdline", line, "--log", str(log))
    assert done.returncode == 0, done.stdout
    lines = done.stdout.splitlines()
    assert lines[0] == f"BLOCKVAULT-RESCUE-START blockvault restore latest {target} --yes"
    assert lines[-1] == "BLOCKVAULT-RESCUE-OK"
    assert log.read_text().splitlines() == lines
    assert target.read_bytes() == disk.read_bytes()


def test_unattended_failure_says_why_in_one_line(tmp_path: Path) -> None:
    medium = preset(tmp_path / "medium", repo=str(tmp_path / "missing"))
    target, log = tmp_path / "target.img", tmp_path / "rescue.log"
    line = f'blockvault.run="restore latest {target} --yes"'
    done = rescue("unattended", medium, "--cmdline", line, "--log", str(log))
    assert done.returncode == 1
    last = done.stdout.splitlines()[-1]
    assert last.startswith("BLOCKVAULT-RESCUE-FAIL exit status 3: ")
    assert "missing" in last
    assert not target.exists()


def test_unattended_with_a_bad_option_fails_clearly(tmp_path: Path) -> None:
    medium = preset(tmp_path / "medium")
    done = rescue("unattended", medium, "--cmdline", "blockvault.after=later blockvault.run=disks")
    assert done.returncode == 1
    assert done.stdout.startswith("BLOCKVAULT-RESCUE-FAIL kernel command line option after:")


def test_no_unattended_option_runs_nothing(tmp_path: Path) -> None:
    medium = preset(tmp_path / "medium")
    done = rescue("unattended", medium, "--cmdline", "boot=live quiet")
    assert (done.returncode, done.stdout) == (0, "")


def test_the_report_reaches_every_console_that_opens_else_the_fallback(tmp_path: Path) -> None:
    serial, gone = tmp_path / "serial", tmp_path / "no" / "tty"
    serial.write_text("")
    fallback = io.StringIO()
    consoles = Consoles([str(gone), str(serial)], fallback)
    consoles.write("BLOCKVAULT-RESCUE-OK\n")
    serial.write_text("")  # the line is written through a new file each time
    consoles.write("second\n")
    assert serial.read_text() == "second\n"
    assert fallback.getvalue() == ""
    Consoles([str(gone)], fallback).write("only here\n")
    assert fallback.getvalue() == "only here\n"


def test_menu_restore_onto_other_hardware_adapts_and_says_why_it_cannot(
    tmp_path: Path, stored: tuple[Path, Path]
) -> None:
    _disk, repo = stored
    target = tmp_path / "target.img"
    medium = preset(tmp_path / "medium", repo=str(repo))
    out = rescue("menu", medium, input=f"3\n\n\n{target}\n{target}\n").stdout
    assert "3) Restore onto other hardware (adapt)" in out
    assert f"$ blockvault -r {repo} restore latest {target} --yes --adapt" in out
    # random bytes hold no Linux system: refused before the target is written
    refusal = "no partition holds a Linux root filesystem" if os.geteuid() == 0 else "needs root"
    assert refusal in out
    assert "failed (exit status 2)" in out
    assert not target.exists()
