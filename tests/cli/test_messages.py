"""What a new user reads: prompts, one-line errors, tables on narrow terminals and
``disks`` on devices it cannot read, through the real command line.

Oracles: ``sfdisk --json`` for the partitions a table must show, the source image for
restored bytes, a real pseudo-terminal for prompts, the kernel's own errors for
unreadable devices.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from blockvault.disk.inventory import UNREADABLE, unreadable
from blockvault.errors import DeviceError
from blockvault_demo.sample import BuiltDisk, DiskSpec, PartitionSpec, build_disk, make_tree
from tests.cli.runner import converse, one_line_error, run
from tests.conftest import IS_ROOT, need_tools, sh

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> BuiltDisk:
    need_tools("sfdisk", "mkfs.ext4")
    work = tmp_path_factory.mktemp("messages")
    make_tree(work / "tree", 2 * MiB, seed=5)
    spec = DiskSpec(
        "gpt",
        40 * MiB,
        [
            PartitionSpec("ext4", 34 * MiB, "a-long-ext4-name", work / "tree"),
            PartitionSpec("raw", 0),
        ],
    )
    return build_disk(spec, work / "disk.img")


def test_new_passphrase_without_a_terminal_says_how_to_give_it(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    line = one_line_error(run("-r", repo, "init", "--encryption", "repokey"), 2)
    assert "BLOCKVAULT_PASSWORD" in line and "--password-file" in line, line
    assert not repo.exists()  # nothing created before the passphrase was known
    old = {"BLOCKVAULT_PASSWORD": "old passphrase"}
    assert run("-r", repo, "init", "--encryption", "repokey", env=old).returncode == 0
    line = one_line_error(run("-r", repo, "key", "change-passphrase", env=old), 2)
    assert "BLOCKVAULT_NEW_PASSWORD" in line and "--new-password-file" in line, line
    assert run("-r", repo, "snapshots", env=old).returncode == 0  # the key is unchanged


def test_overwrite_prompt_shows_y_n_and_enter_means_no(disk: BuiltDisk, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert run("-r", repo, "init").returncode == 0
    assert run("-r", repo, "backup", disk.path).returncode == 0
    target = tmp_path / "target.img"
    held = os.urandom(MiB)
    with open(target, "wb") as f:
        f.write(held)
        f.truncate(disk.size)
    args = ["-r", str(repo), "restore", "latest", str(target)]
    code, output = converse(args, [""], hidden=False)
    assert "[y/N]" in output and code == 2, output
    assert target.read_bytes()[:MiB] == held  # Enter is no: nothing written
    code, output = converse(args, ["\x03"], hidden=False)
    assert code == 130 and "interrupted" in output, output
    assert target.read_bytes()[:MiB] == held
    code, output = converse(args, ["y"], hidden=False)
    assert code == 0, output
    assert target.read_bytes() == disk.path.read_bytes()


def cells(output: str, row_start: str) -> list[list[str]]:
    """The cells of the table row whose first line starts with ``row_start``, line by
    line (a folded cell continues on the next lines)."""
    lines = output.splitlines()
    first = next(k for k, line in enumerate(lines) if line.lstrip().startswith(row_start))
    row = [lines[first]]
    for line in lines[first + 1 :]:
        if line.split("│")[0].strip():  # the next row begins
            break
        row.append(line)
    return [[c.strip() for c in line.split("│")] for line in row]


@pytest.mark.parametrize("columns", [40, 60])
def test_narrow_terminal_keeps_ids_devices_and_sizes_whole(
    disk: BuiltDisk, tmp_path: Path, columns: int
) -> None:
    oracle = json.loads(sh("sfdisk", "--json", disk.path))["partitiontable"]
    width = {"COLUMNS": str(columns)}
    shown = run("inspect", disk.path, env=width)
    assert shown.returncode == 0, shown.stderr
    assert "…" not in shown.stdout, shown.stdout
    for number, part in enumerate(oracle["partitions"], 1):
        row = cells(shown.stdout, f"{number} │")
        start, size = str(part["start"] * 512), part["size"] * 512
        assert row[0][1] == start and row[0][2] == f"{size // MiB} MiB", row
        # the type (a GPT name, else the type GUID) folds over lines, losing no character
        shown_type = "".join(line[3] for line in row)
        assert shown_type.upper() == (part.get("name") or part["type"]).upper(), row
    assert "".join(line[5] for line in cells(shown.stdout, "1 │")) == "a-long-ext4-name"

    repo = tmp_path / "repo"
    assert run("-r", repo, "init").returncode == 0
    assert run("-r", repo, "backup", disk.path).returncode == 0
    listed = run("-r", repo, "snapshots", "--json")
    snapshot = json.loads(listed.stdout)[0]["id"]
    info = run("-r", repo, "info", snapshot[:8], env=width)
    assert info.returncode == 0 and "…" not in info.stdout, info.stdout
    assert snapshot in info.stdout
    # every column keeps its header whole: none was squeezed away
    for command, headers in (
        (("inspect", disk.path), "# Start Size Type Filesystem Label Used"),
        (("-r", repo, "snapshots"), "ID Time Host Source Size Used Stored Tags Live"),
        (("-r", repo, "ls", "latest"), "# Filesystem Size Label Imaged"),
    ):
        listed = run(*command, env=width)
        assert listed.returncode == 0 and "…" not in listed.stdout, listed
        header = next(line for line in listed.stdout.splitlines() if "┃" in line)
        assert [c.strip() for c in header.split("┃")] == headers.split(), listed.stdout
    row = cells(run("-r", repo, "snapshots", env=width).stdout, snapshot[:12])[0]
    assert row[0] == snapshot[:12] and row[4:7] == ["40 MiB", *row[5:7]], row
    assert cells(info.stdout, "partition 1 │")[0][0] == "partition 1"


def test_unreadable_devices_are_explained_in_words() -> None:
    for code, words in UNREADABLE.items():
        try:  # the way open_device reports it: the OS error only as the context
            try:
                raise OSError(code, os.strerror(code))
            except OSError as exc:
                raise DeviceError(exc.strerror or "", path="/dev/sdz") from None
        except DeviceError as exc:
            said = unreadable(exc)
        if code in (errno.EACCES, errno.EPERM) and IS_ROOT:
            assert "even to root" in said
        else:
            assert said == words
        assert "errno" not in said.lower()


@pytest.mark.root
@pytest.mark.skipif(not IS_ROOT, reason="needs root for loop devices")
def test_disks_prints_each_warning_once_naming_its_device(
    disk: BuiltDisk, loop: Callable[..., str]
) -> None:
    first, second = loop(disk.path), loop(disk.path)  # the same disk twice
    shown = run("disks")
    assert shown.returncode == 0, shown.stderr
    warnings = [line for line in shown.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == len(set(warnings)), warnings
    for device in (first, second):
        assert f"warning: {device} partition 2: unknown content" in warnings[0] or any(
            w.startswith(f"warning: {device} partition 2: unknown content") for w in warnings
        ), warnings
        assert shown.stdout.count(f"{device}:") == 1  # its partition table, once
    assert "Errno" not in shown.stdout + shown.stderr


def test_summaries_say_one_snapshot(disk: BuiltDisk, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert run("-r", repo, "init").returncode == 0
    assert run("-r", repo, "backup", disk.path).returncode == 0
    checked = run("-r", repo, "check")
    assert checked.returncode == 0 and "checked 1 snapshot, " in checked.stdout, checked
    verified = run("-r", repo, "verify")
    assert verified.returncode == 0 and "verified 1 snapshot, " in verified.stdout, verified
    pruned = run("-r", repo, "prune", "--keep-last", "1", "--dry-run")
    assert "would remove 0 of 1 snapshot" in pruned.stdout, pruned


@pytest.mark.parametrize(
    ("key", "code", "said"),
    [("\x03", 130, "interrupted"), ("\x04", 2, "the input ended at a prompt")],
    ids=["ctrl-c", "ctrl-d"],
)
def test_ctrl_c_and_ctrl_d_at_a_prompt_exit_as_the_table_says(
    tmp_path: Path, key: str, code: int, said: str
) -> None:
    repo = tmp_path / "repo"
    got, output = converse(["-r", str(repo), "init", "--encryption", "repokey"], [key])
    assert got == code and said in output and "Aborted" not in output, output
    assert not repo.exists()


@pytest.mark.root
@pytest.mark.skipif(not IS_ROOT, reason="needs root for loop devices and mount namespaces")
def test_devices_unreadable_for_one_reason_share_one_line(
    disk: BuiltDisk, loop: Callable[..., str], tmp_path: Path
) -> None:
    need_tools("unshare", "setpriv", "mknod")
    devices = [loop(disk.path), loop(disk.path)]
    # in a private mount namespace each device node is replaced by one nobody may open,
    # and blockvault runs without the capabilities that let root ignore that
    hide = " && ".join(
        f"mknod {tmp_path}/node{k} b {os.major(os.stat(d).st_rdev)} {os.minor(os.stat(d).st_rdev)}"
        f" && chmod 000 {tmp_path}/node{k} && mount --bind {tmp_path}/node{k} {d}"
        for k, d in enumerate(devices)
    )
    shown = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f"{hide} && exec setpriv --bounding-set -dac_override,-dac_read_search blockvault disks"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    for device in devices:
        row = cells(shown.stdout, device)[0]
        assert row[5] == "unreadable", row  # the Used column
        named = [line for line in shown.stderr.splitlines() if device in line]
        assert len(named) == 1 and "permission denied" in named[0], shown.stderr
    assert all(device in named[0] for device in devices), named  # one line for both
    assert "Errno" not in shown.stdout + shown.stderr
