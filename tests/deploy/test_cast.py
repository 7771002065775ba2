"""Multicast deployment with real processes in network namespaces.

A bridge in its own namespace joins one sender and several receivers over veth
pairs; loss is made with nftables drops inside a receiver's namespace (no netem on
the CI kernel). Every finished target must equal the source and fsck clean.
"""

from __future__ import annotations

import contextlib
import filecmp
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from blockvault.deploy import auth, wire
from blockvault.pipeline.backup import backup
from blockvault.repo import Repository
from blockvault.repo.keys import ScryptParams
from blockvault_demo.netns import Bridge, bridge
from blockvault_demo.sample import BuiltDisk, DiskSpec, PartitionSpec, build_disk, make_tree
from tests.conftest import IS_ROOT, need_tools, sh
from tests.fstree import extract, fsck

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root for network namespaces")

MiB = 1024 * 1024
LIMIT = 60  # seconds any one cast process may run


class Net(Bridge):
    """The cast network, with ``blockvault`` run in its namespaces; sender and receivers
    share the session code in ``key_file``."""

    key_file: Path

    def run(
        self, ns: str, *args: str | os.PathLike[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["ip", "netns", "exec", ns, "blockvault", *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=None if env is None else {**os.environ, **env},
        )

    def receive(self, ns: str, target: Path, *options: str) -> subprocess.Popen[str]:
        """``cast receive TARGET`` in ``ns``, on this bridge's interface and session."""
        return self.run(
            ns,
            "cast",
            "receive",
            target,
            "--interface",
            "cast0",
            "--session",
            self.prefix,
            "--key-file",
            self.key_file,
            *options,
        )

    def send(
        self, repo: Path, snap: str, *options: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        """``cast send SNAP`` from the sender, on this bridge's interface and session."""
        return self.run(
            self.sender,
            "-r",
            repo,
            "cast",
            "send",
            snap,
            "--interface",
            "cast0",
            "--session",
            self.prefix,
            "--key-file",
            self.key_file,
            *options,
            env=env,
        )


@contextlib.contextmanager
def network(mtus: list[int]) -> Iterator[Net]:
    """A namespace per entry of ``mtus`` (the sender's first) on one bridge, with a
    fresh session code in a key file."""
    need_tools("ip", "nft")
    with tempfile.TemporaryDirectory(prefix="bv-cast-") as keys, bridge(Net, mtus) as net:
        net.key_file = Path(keys) / "code"
        net.key_file.write_text(auth.new_code() + "\n")
        yield net


@pytest.fixture
def net() -> Iterator[Net]:
    with network([1500] * 5) as made:
        yield made


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[BuiltDisk, Path, str]:
    work = tmp_path_factory.mktemp("cast")
    make_tree(work / "tree", 12 * MiB, seed=6)
    disk = build_disk(
        DiskSpec("gpt", 48 * MiB, [PartitionSpec("ext4", 40 * MiB, content=work / "tree")]),
        work / "disk.img",
    )
    repo = Repository.init(str(work / "repo"))
    snap = backup(repo, str(disk.path))
    return disk, work / "repo", snap.id


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=LIMIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"cast process ran over {LIMIT}s: {err}") from None
    return proc.returncode, out, err


def check_copy(target: Path, disk: BuiltDisk, tmp: Path) -> None:
    assert filecmp.cmp(disk.path, target, shallow=False)
    part = disk.partitions[0]
    fsck(extract(target, part.offset, part.size, tmp / f"{target.stem}.part"), part.fs)


def cast(
    net: Net,
    source: tuple[BuiltDisk, Path, str],
    tmp: Path,
    receivers: int,
    *extra: str,
    env: dict[str, str] | None = None,
) -> tuple[list[subprocess.Popen[str]], subprocess.Popen[str], list[Path]]:
    _disk, repo, snap = source
    targets = [tmp / f"target{i}.img" for i in range(receivers)]
    procs = [
        net.receive(ns, t, "--max-wait", "30", "--json")
        for ns, t in zip(net.receivers, targets, strict=False)
    ]
    sender = net.send(
        repo,
        snap,
        "--min-receivers",
        str(receivers),
        "--max-wait",
        "20",
        "--timeout",
        "40",
        "--json",
        *extra,
        env=env,
    )
    return procs, sender, targets


def all_verified(
    procs: list[subprocess.Popen[str]],
    sender: subprocess.Popen[str],
    targets: list[Path],
    disk: BuiltDisk,
    tmp: Path,
) -> dict[str, Any]:
    """Wait for a cast every receiver should finish: the sender's report says each one
    verified, each exits 0 and its target equals the source. Returns the report."""
    results = [finish(p) for p in procs]
    code, out, err = finish(sender)
    assert code == 0, err
    report: dict[str, Any] = json.loads(out)
    assert sorted(r["status"] for r in report["receivers"]) == ["verified"] * len(targets)
    for (rc, _, rerr), target in zip(results, targets, strict=True):
        assert rc == 0, rerr
        check_copy(target, disk, tmp)
    return report


def refused(net: Net, source: tuple[BuiltDisk, Path, str], target: Path, words: str) -> None:
    """A receiver that must refuse ``target`` before writing: a one-line error with
    ``words`` and a non-zero exit; the sender reports the receiver failed."""
    _disk, repo, snap = source
    proc = net.receive(net.receivers[0], target, "--max-wait", "20", "--yes")
    sender = net.send(repo, snap, "--max-wait", "5", "--json")
    rc, _, err = finish(proc)
    assert rc != 0
    assert len(err.strip().splitlines()) == 1 and words in err, err
    assert "Traceback" not in err
    code, out, _ = finish(sender)
    assert code == 1
    assert json.loads(out)["receivers"][0]["status"] == "failed"


@pytest.mark.parametrize("loss", [0, 1, 5])
def test_three_receivers_one_lossy_link(
    net: Net, source: tuple[BuiltDisk, Path, str], tmp_path: Path, loss: int
) -> None:
    if loss:
        net.lose(net.receivers[2], loss)
    report = all_verified(*cast(net, source, tmp_path, 3), source[0], tmp_path)
    assert report["payload"] == 1500 - 28 - wire.OVERHEAD  # less IP, UDP, our header and tag
    passes = report["pass_reports"]
    assert len(passes) == report["passes"]
    assert not passes[0]["parity"]  # nobody had lost anything yet
    assert [p["chunks"] for p in passes] == sorted((p["chunks"] for p in passes), reverse=True)
    if loss == 5:  # XOR parity repairs one loss in nine: at 5 % some chunks need a NAK
        lossy = next(r for r in report["receivers"] if r["address"] == "10.77.0.4")
        assert lossy["naks"] > 0 and report["passes"] > 1
        assert passes[0]["worst_loss"] > 0 and passes[1]["parity"]


def test_killed_receiver_does_not_stop_the_others(
    net: Net, source: tuple[BuiltDisk, Path, str], tmp_path: Path
) -> None:
    procs, sender, targets = cast(net, source, tmp_path, 4, "--max-rate", "30")
    time.sleep(1.5)
    target = targets[3]
    deadline = time.monotonic() + 20
    while not (target.exists() and target.stat().st_blocks) and time.monotonic() < deadline:
        time.sleep(0.1)
    procs[3].kill()
    results = [finish(p) for p in procs]
    code, out, _err = finish(sender)
    assert code == 1  # one receiver did not finish: the session says so
    report = {r["address"]: r for r in json.loads(out)["receivers"]}
    assert report["10.77.0.5"]["status"] == "failed"
    assert [report[f"10.77.0.{i}"]["status"] for i in (2, 3, 4)] == ["verified"] * 3
    for (rc, _, rerr), t in zip(results[:3], targets[:3], strict=True):
        assert rc == 0, rerr
        check_copy(t, source[0], tmp_path)


def test_too_small_target_refused_before_writing(
    net: Net, source: tuple[BuiltDisk, Path, str], tmp_path: Path
) -> None:
    small = tmp_path / "small.img"
    small.write_bytes(b"\x55" * MiB)
    refused(net, source, small, "too small")
    assert small.read_bytes() == b"\x55" * MiB


def test_late_joiner_gets_what_it_missed(
    net: Net, source: tuple[BuiltDisk, Path, str], tmp_path: Path
) -> None:
    _disk, repo, snap = source
    targets = [tmp_path / f"target{i}.img" for i in range(3)]

    def receiver(i: int) -> subprocess.Popen[str]:
        return net.receive(net.receivers[i], targets[i], "--max-wait", "30")

    early = [receiver(0), receiver(1)]
    sender = net.send(
        repo,
        snap,
        "--min-receivers",
        "2",
        "--max-wait",
        "20",
        "--max-rate",
        "30",
        "--json",
    )
    deadline = time.monotonic() + 20
    while not (targets[0].exists() and targets[0].stat().st_blocks) and time.monotonic() < deadline:
        time.sleep(0.1)
    late = receiver(2)  # streaming has begun: the first pass is under way
    results = [finish(p) for p in [*early, late]]
    code, out, err = finish(sender)
    assert code == 0, err
    assert [r["status"] for r in json.loads(out)["receivers"]] == ["verified"] * 3
    for (rc, _, rerr), t in zip(results, targets, strict=True):
        assert rc == 0, rerr
        check_copy(t, source[0], tmp_path)


@pytest.mark.parametrize(
    ("mtus", "payload"),
    [([9000, 9000, 9000], 9000 - 28 - 42), ([9000, 9000, 1500], 1500 - 28 - 42)],
    ids=["jumbo", "one-receiver-at-1500"],
)
def test_datagrams_fill_the_smallest_receivers_mtu(
    source: tuple[BuiltDisk, Path, str], tmp_path: Path, mtus: list[int], payload: int
) -> None:
    with network(mtus) as jumbo:
        report = all_verified(*cast(jumbo, source, tmp_path, 2), source[0], tmp_path)
    assert report["payload"] == payload


def test_larger_target_gets_the_gpt_backup_at_its_end(
    net: Net, source: tuple[BuiltDisk, Path, str], tmp_path: Path
) -> None:
    need_tools("sgdisk")
    disk, repo, snap = source
    target = tmp_path / "larger.img"
    with open(target, "wb") as f:
        f.truncate(64 * MiB)
    proc = net.receive(net.receivers[0], target, "--max-wait", "30")
    sender = net.send(repo, snap, "--max-wait", "20", "--timeout", "40", "--json")
    rc, _, err = finish(proc)
    assert rc == 0, err
    code, _, serr = finish(sender)
    assert code == 0, serr
    assert "No problems found" in sh("sgdisk", "-v", target)
    table = json.loads(sh("sfdisk", "--json", target))["partitiontable"]
    assert table["lastlba"] == 64 * MiB // 512 - 34
    # the old backup (entries + header) was not written mid-disk
    with open(target, "rb") as f:
        f.seek(disk.path.stat().st_size - 33 * 512)
        assert f.read(33 * 512) == bytes(33 * 512)
    part = disk.partitions[0]
    with open(disk.path, "rb") as a, open(target, "rb") as b:
        a.seek(part.offset)
        b.seek(part.offset)
        assert a.read(part.size) == b.read(part.size)
    fsck(extract(target, part.offset, part.size, tmp_path / "larger.part"), part.fs)


@pytest.fixture(scope="module")
def encrypted(
    source: tuple[BuiltDisk, Path, str], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    repo_path = tmp_path_factory.mktemp("cast-encrypted") / "repo"
    repo = Repository.init(
        str(repo_path), encryption="repokey", passphrase="cast", kdf=ScryptParams(n=2**10)
    )
    return repo_path, backup(repo, str(source[0].path)).id


def test_encrypted_repository_receivers_need_no_key(
    net: Net,
    source: tuple[BuiltDisk, Path, str],
    encrypted: tuple[Path, str],
    tmp_path: Path,
) -> None:
    repo, snap = encrypted
    sent = cast(net, (source[0], repo, snap), tmp_path, 2, env={"BLOCKVAULT_PASSWORD": "cast"})
    all_verified(*sent, source[0], tmp_path)


def test_mounted_target_refused_before_writing(
    net: Net,
    source: tuple[BuiltDisk, Path, str],
    tmp_path: Path,
    loop: Callable[..., str],
    mounted: Callable[..., Path],
) -> None:
    need_tools("mkfs.ext4")
    image = tmp_path / "mounted.img"
    with open(image, "wb") as f:
        f.truncate(64 * MiB)
    sh("mkfs.ext4", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0", image)
    device = loop(image)
    mounted(device, tmp_path / "mnt", "-o", "ro")
    before = image.read_bytes()
    refused(net, source, Path(device), "mounted")
    assert image.read_bytes() == before


def test_loss_of_the_link_itself_does_not_slow_the_cast(
    net: Net, source: tuple[BuiltDisk, Path, str], tmp_path: Path
) -> None:
    net.lose(net.receivers[0], 5)  # random loss whatever the rate: not congestion
    procs, sender, targets = cast(net, source, tmp_path, 1)
    rc, _, rerr = finish(procs[0])
    code, out, err = finish(sender)
    assert code == 0 and rc == 0, err + rerr
    report = json.loads(out)
    assert report["receivers"][0]["naks"] > 0
    assert report["final_rate_mbit"] >= 500  # not cut down towards the 5 Mbit/s floor
    check_copy(targets[0], source[0], tmp_path)


def test_other_sector_size_refused_before_writing(
    net: Net, source: tuple[BuiltDisk, Path, str], tmp_path: Path, loop: Callable[..., str]
) -> None:
    image = tmp_path / "4k.img"
    image.write_bytes(b"\x55" * MiB)
    with open(image, "r+b") as f:
        f.truncate(64 * MiB)
    device = loop(image, sector_size=4096)
    refused(net, source, Path(device), "4096-byte sectors")
    assert image.read_bytes()[:MiB] == b"\x55" * MiB


def test_forged_packets_from_another_namespace_are_dropped(
    net: Net, source: tuple[BuiltDisk, Path, str], tmp_path: Path
) -> None:
    """An attacker on the LAN without the code forges announcements, datagrams and
    control connections, and replays datagrams of an earlier pass: every receiver
    still ends byte-identical, having dropped and counted what it was sent."""
    net.lose(net.receivers[2], 5)  # a second pass, so there is a later pass to replay into
    attacker = net.receivers[3]
    forger = subprocess.Popen(
        ["ip", "netns", "exec", attacker, sys.executable, "-m", "tests.deploy.forger", "10.77.0.5"],
        cwd=Path(__file__).parents[2],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        procs, sender, targets = cast(net, source, tmp_path, 3, "--max-rate", "40")
        outs = [finish(p) for p in procs]
        report = all_verified(procs, sender, targets, source[0], tmp_path)
    finally:
        forger.terminate()
        sent_out, forger_err = forger.communicate(timeout=LIMIT)
    sent = json.loads(sent_out)
    assert sent["forged"] > 100 and sent["control"] == 2, (sent, forger_err)
    assert sorted(r["address"] for r in report["receivers"]) == [f"10.77.0.{i}" for i in (2, 3, 4)]
    assert report["rejected"] == 2  # the forged hello and the endless line
    results = [json.loads(out) for _, out, _ in outs]
    for result in results:
        assert result["forged"] > 0 and result["foreign"] > 0, result
    # the lossy receiver needed a second pass, and dropped the first's replayed into it
    assert report["passes"] > 1 and sent["replayed"] > 0
    assert results[2]["replayed"] > 0, (sent, results[2])


def test_a_receiver_with_a_wrong_code_writes_nothing(
    net: Net, source: tuple[BuiltDisk, Path, str], tmp_path: Path
) -> None:
    _disk, repo, snap = source
    target = tmp_path / "target.img"
    wrong = net.run(
        net.receivers[0],
        "cast", "receive", target, "--interface", "cast0", "--session", net.prefix,
        "--code", auth.new_code(), "--max-wait", "4",
    )  # fmt: skip
    sender = net.send(repo, snap, "--max-wait", "6", "--json")
    rc, _, err = finish(wrong)
    assert rc == 1 and "failed authentication" in err and "same session code" in err, err
    assert len(err.strip().splitlines()) == 1
    assert not target.exists()
    code, out, _ = finish(sender)
    assert code == 1 and json.loads(out)["receivers"] == []  # nobody joined


@pytest.mark.parametrize(
    ("stopped", "number", "words"),
    [("receiver", signal.SIGTERM, "is incomplete"), ("sender", signal.SIGINT, "incomplete")],
)
def test_a_signal_stops_a_cast_cleanly_with_the_truth_about_the_target(
    net: Net,
    source: tuple[BuiltDisk, Path, str],
    tmp_path: Path,
    stopped: str,
    number: int,
    words: str,
) -> None:
    procs, sender, targets = cast(net, source, tmp_path, 2, "--max-rate", "20")
    deadline = time.monotonic() + 20
    while not (targets[0].exists() and targets[0].stat().st_blocks) and time.monotonic() < deadline:
        time.sleep(0.05)  # chunks are being written: the cast is under way
    (procs[0] if stopped == "receiver" else sender).send_signal(number)
    results = [finish(p) for p in procs]
    code, out, err = finish(sender)
    rc, _, rerr = results[0]
    if stopped == "receiver":
        assert rc == 128 + number, rerr
        assert len(rerr.strip().splitlines()) == 1 and words in rerr and "Traceback" not in rerr
        assert code == 1  # the others finished; the stopped one is reported failed
        report = {r["address"]: r for r in json.loads(out)["receivers"]}
        assert report["10.77.0.2"]["status"] == "failed"
        assert "interrupted" in report["10.77.0.2"]["reason"]
        assert results[1][0] == 0
        check_copy(targets[1], source[0], tmp_path)
    else:
        assert code == 128 + number, err
        lines = [line for line in err.splitlines() if line.startswith("blockvault:")]
        assert len(lines) == 1 and words in lines[0] and "Traceback" not in err, err
        for receiver_rc, _, receiver_err in results:  # told at once, not after a minute
            assert receiver_rc == 1 and "the sender was interrupted" in receiver_err
    assert not filecmp.cmp(targets[0], source[0].path, shallow=False)


@pytest.mark.parametrize("interface", [True, False], ids=["interface", "routing-table"])
def test_the_control_listener_binds_the_interface_it_serves(
    net: Net, source: tuple[BuiltDisk, Path, str], interface: bool
) -> None:
    need_tools("ss")
    _disk, repo, snap = source
    if interface:
        sender = net.send(repo, snap, "--max-wait", "3")
    else:  # the address the routing table sends multicast from (cast0's here)
        sender = net.run(
            net.sender, "-r", repo, "cast", "send", snap, "--session", net.prefix, "--max-wait", "3"
        )
    listening: list[str] = []
    deadline = time.monotonic() + 20
    while not listening and sender.poll() is None and time.monotonic() < deadline:
        out = sh("ip", "netns", "exec", net.sender, "ss", "-Hltn", "sport", "= :9520")
        listening = [line.split()[3] for line in out.splitlines()]
        time.sleep(0.05)
    finish(sender)
    assert listening == ["10.77.0.1:9520"]


def test_two_sessions_at_once_on_one_network_each_get_their_own_data_group(
    net: Net, source: tuple[BuiltDisk, Path, str], tmp_path: Path
) -> None:
    """Two sends at once from one machine (each on a free control port, which the
    receivers learn from its announcement): every receiver ends byte-identical, and
    none was sent a datagram of the other session (each session has its own group)."""
    disk, repo, snap = source
    other_sender, other_receiver = net.sender, net.receivers[2]
    procs, sender, targets = cast(net, source, tmp_path, 2, "--max-rate", "40", "--port", "0")
    other_target = tmp_path / "other.img"
    other = [
        net.run(
            other_receiver, "cast", "receive", other_target, "--interface", "cast0",
            "--session", f"{net.prefix}x", "--key-file", net.key_file, "--max-wait", "30", "--json",
        ),
        net.run(
            other_sender, "-r", repo, "cast", "send", snap, "--interface", "cast0",
            "--session", f"{net.prefix}x", "--key-file", net.key_file, "--min-receivers", "1",
            "--max-wait", "20", "--timeout", "40", "--json", "--max-rate", "40", "--port", "0",
        ),
    ]  # fmt: skip
    all_verified(procs, sender, targets, disk, tmp_path)
    all_verified(other[:1], other[1], [other_target], disk, tmp_path)
    results = [json.loads(finish(p)[1]) for p in [*procs, other[0]]]
    assert [r["foreign"] for r in results] == [0, 0, 0], results
