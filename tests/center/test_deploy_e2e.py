"""A multicast deployment driven by the center, end to end with real processes: a
``center serve`` process, and ``blockvault agent`` processes each in its own network
namespace on one bridge (the center reached over a veth of the host), a sender agent
holding the repository and receiver agents each with a blank loop-device disk.
``POST /api/v1/deployments`` -> every receiver's disk is byte-identical to the
snapshot's disk and fsck clean, the parent job done with every child counted; a
receiver whose disk is mounted refuses before writing.

SQLite only, as the fleet test: the API tests run every query on PostgreSQL too.
"""

from __future__ import annotations

import contextlib
import filecmp
import json
import os
import random
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import blockvault
from blockvault.rescue.wol import magic_packet
from blockvault_demo.netns import Bridge, bridge
from blockvault_demo.sample import BuiltDisk, DiskSpec, PartitionSpec, build_disk, make_tree
from tests.center.server import CenterServer, running_center
from tests.center.test_agents_e2e import DEADLINE, Agent, wait_for
from tests.conftest import need_tools, needs_root, sh
from tests.fstree import extract, fsck
from tests.rescue.test_pxe import fake_iso

pytestmark = [needs_root, pytest.mark.root]
__all__ = ["fake_iso"]  # a fixture of the PXE tests: an ISO with a kernel and initramfs

MiB = 1 << 20


class NsAgent(Agent):
    """An agent process in network namespace ``ns``, talking to the center at ``url``."""

    def __init__(self, name: str, workdir: Path, ns: str, url: str) -> None:
        super().__init__(name, workdir)
        self.ns, self.url = ns, url

    def enrol_at(self, server: CenterServer, token: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns, "blockvault", "agent", "enrol", self.url,
             "--token", token, "--fingerprint", server.fingerprint, "--name", self.name],
            capture_output=True, text=True, env={**os.environ, **self.env}, check=False,
        )  # fmt: skip

    def start(self) -> None:
        command = ["blockvault", "agent", "--jitter", "0", "--startup-delay", "0"]
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, *command, "--log-file", str(self.log)],
            env={**os.environ, **self.env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


@contextlib.contextmanager
def lab(namespaces: int) -> Iterator[tuple[Bridge, str]]:
    """``namespaces`` on one bridge in a random 10.x.y.0/24, and the host's own address
    on it (a veth into the bridge), where the center listens."""
    subnet = f"10.{random.randrange(100, 250)}.{random.randrange(1, 250)}"
    with bridge(Bridge, [1500] * namespaces, subnet=subnet) as net:
        host_end, hub_end, hub = f"{net.prefix}h", f"{net.prefix}H", f"{net.prefix}b"
        sh("ip", "link", "add", host_end, "type", "veth", "peer", hub_end, "netns", hub)
        try:
            sh("ip", "-n", hub, "link", "set", hub_end, "master", "br0", "up")
            sh("ip", "addr", "add", f"{subnet}.254/24", "dev", host_end)
            sh("ip", "link", "set", host_end, "up")
            yield net, f"{subnet}.254"
        finally:
            subprocess.run(["ip", "link", "del", host_end], check=False, capture_output=True)


@contextlib.contextmanager
def enrolled(
    server: CenterServer, url: str, names: dict[str, str], tmp_path: Path
) -> Iterator[list[NsAgent]]:
    """An agent per name (in the namespace it maps to), enrolled and running; killed
    afterwards."""
    agents: list[NsAgent] = []
    try:
        for name, ns in names.items():
            made = server.blockvault("token", "create", "--json")
            assert made.returncode == 0, made.stderr
            agent = NsAgent(name, tmp_path / name, ns, url)
            done = agent.enrol_at(server, json.loads(made.stdout)["token"])
            assert done.returncode == 0, done.stderr
            agent.start()
            agents.append(agent)
        yield agents
    finally:
        for agent in agents:
            if agent.alive():
                assert agent.proc is not None
                agent.proc.kill()
                agent.proc.wait()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[BuiltDisk, Path]:
    work = tmp_path_factory.mktemp("deploy")
    make_tree(work / "tree", 4 * MiB, seed=17)
    spec = DiskSpec("gpt", 24 * MiB, [PartitionSpec("ext4", 0, "data", work / "tree")])
    disk = build_disk(spec, work / "disk.img")
    repo = blockvault.Repository.init(str(work / "repo"), chunk_size=256 * 1024)
    blockvault.backup(repo, str(disk.path))
    return disk, work / "repo"


def ended(api: httpx.Client, job_id: int) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job: dict[str, Any] = api.get(f"/api/v1/jobs/{job_id}").json()
        return job if job["state"] in {"done", "failed", "cancelled"} else None

    return wait_for(f"end of job {job_id}", done)  # type: ignore[no-any-return]


def children(api: httpx.Client, parent: int) -> dict[str, dict[str, Any]]:
    jobs = api.get("/api/v1/jobs", params={"parent": parent}).json()["jobs"]
    return {f"{j['kind']}@{j['host']}": j for j in jobs}


def test_the_center_deploys_a_snapshot_to_agents_by_multicast(
    tmp_path: Path,
    source: tuple[BuiltDisk, Path],
    loop: Callable[..., str],
    mounted: Callable[..., Path],
) -> None:
    disk, repo = source
    blanks = []
    for n in range(3):
        blank = tmp_path / f"blank{n}.img"
        blank.write_bytes(b"")
        os.truncate(blank, disk.path.stat().st_size)
        blanks.append(blank)
    targets = [loop(blank) for blank in blanks]
    sh("mkfs.ext4", "-q", targets[2])
    mounted(targets[2], tmp_path / "busy")  # pc3's disk is in use: refused

    with (
        lab(4) as (net, address),
        running_center(
            tmp_path / "center", f"sqlite:///{tmp_path / 'center.db'}", host="0.0.0.0"
        ) as server,
    ):
        url = f"https://{address}:{server.port}"
        admin = server.client(server.api_token())
        names = {"depot": net.sender, **{f"pc{n + 1}": ns for n, ns in enumerate(net.receivers)}}
        with enrolled(server, url, names, tmp_path) as agents:
            deployment = {
                "repo": str(repo),
                "snapshot": "latest",
                "sender": "depot",
                "hosts": [{"host": f"pc{n + 1}", "disk": targets[n]} for n in range(2)],
            }
            made = admin.post("/api/v1/deployments", json=deployment)
            assert made.status_code == 201, made.text
            parent = ended(admin, made.json()["id"])
            logs = "\n".join(a.log.read_text(errors="replace")[-1500:] for a in agents)
            assert parent["state"] == "done", (parent, children(admin, parent["id"]), logs)
            assert parent["progress"]["done"] == parent["progress"]["total"] == 3
            jobs = children(admin, parent["id"])
            assert sorted(jobs) == ["cast-receive@pc1", "cast-receive@pc2", "cast-send@depot"]
            assert all(j["state"] == "done" for j in jobs.values()), jobs
            part = disk.partitions[0]
            for n in range(2):
                assert filecmp.cmp(disk.path, blanks[n], shallow=False)
                fsck(extract(blanks[n], part.offset, part.size, tmp_path / f"p{n}"), part.fs)

            before = blanks[2].read_bytes()
            refused = {**deployment, "hosts": [{"host": "pc3", "disk": targets[2]}]}
            made = admin.post("/api/v1/deployments", json=refused)
            assert made.status_code == 201, made.text

            def receiver_failed() -> dict[str, Any] | None:
                job = children(admin, made.json()["id"])["cast-receive@pc3"]
                return job if job["state"] in {"done", "failed"} else None

            job = wait_for("pc3's refusal", receiver_failed, agents[3].log)
            assert job["state"] == "failed" and "mounted" in job["error"], job
            cancelled = admin.post(f"/api/v1/jobs/{made.json()['id']}/cancel")
            assert cancelled.status_code == 200, cancelled.text
            assert ended(admin, made.json()["id"])["state"] == "cancelled"
            assert blanks[2].read_bytes() == before  # nothing written


MAC = "52:54:00:bd:00:01"
WOL_LISTENER = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.bind(("", 9))
print(s.recv(1024).hex(), flush=True)
"""


def run_in(ns: str, *args: str) -> bytes:
    """The output of ``args`` in namespace ``ns`` (empty when it fails)."""
    done = subprocess.run(["ip", "netns", "exec", ns, *args], capture_output=True, check=False)
    return done.stdout if done.returncode == 0 else b""


def test_the_center_deploys_to_bare_metal_by_mac_through_an_agents_pxe_server(
    tmp_path: Path, source: tuple[BuiltDisk, Path], loop: Callable[..., str], fake_iso: Path
) -> None:
    """No VM: the "machine" in its own namespace hears its Wake-on-LAN packet on a real
    socket, fetches the iPXE loader by TFTP and its boot script by HTTP from the agent's
    ``pxe serve``, and runs the ``cast receive`` its kernel options name onto a blank
    loop device, as the rescue system would. The job ends done, the disk identical,
    and dnsmasq gone."""
    need_tools("dnsmasq", "curl")
    disk, repo = source
    blank = tmp_path / "bare.img"
    blank.write_bytes(b"")
    os.truncate(blank, disk.path.stat().st_size)
    target = loop(blank)
    with (
        lab(2) as (net, address),
        running_center(
            tmp_path / "center", f"sqlite:///{tmp_path / 'center.db'}", host="0.0.0.0"
        ) as server,
        enrolled(server, f"https://{address}:{server.port}", {"depot": net.sender}, tmp_path),
    ):
        machine = net.receivers[0]
        wol = subprocess.Popen(  # the machine's card, listening for its magic packet
            ["ip", "netns", "exec", machine, sys.executable, "-c", WOL_LISTENER],
            stdout=subprocess.PIPE,
            text=True,
        )
        admin = server.client(server.api_token())
        request = {
            "repo": str(repo), "snapshot": "latest", "server": "depot", "macs": ["bad"],
            "interface": "cast0", "iso": str(fake_iso),
        }  # fmt: skip
        refused = admin.post("/api/v1/deployments/bare-metal", json=request)
        assert refused.status_code == 422 and "not a MAC address" in refused.text, refused.text
        made = admin.post("/api/v1/deployments/bare-metal", json={**request, "macs": [MAC]})
        assert made.status_code == 201, made.text
        job_id = made.json()["id"]

        assert wol.communicate(timeout=DEADLINE)[0].strip() == magic_packet(MAC).hex()
        depot = address.rsplit(".", 1)[0] + ".1"  # the sender namespace's address
        base = f"http://{depot}:9521"
        script = wait_for(
            "pxe serve", lambda: run_in(machine, "curl", "-sf", f"{base}/boot.ipxe?mac={MAC}")
        )
        loader = run_in(machine, "curl", "-sf", f"tftp://{depot}/undionly.kpxe")
        assert loader == Path("/usr/lib/ipxe/undionly.kpxe").read_bytes()
        options = dict(re.findall(r"blockvault\.(\w+)=(\S+)", script.decode()))
        assert options["cast"] == "receive" and options["session"].startswith("deploy-")
        other = run_in(machine, "curl", "-sf", f"{base}/boot.ipxe?mac=52:54:00:bd:00:02")
        assert b"blockvault.cast" not in other  # a machine not named gets the menu
        received = subprocess.run(
            ["ip", "netns", "exec", machine, "blockvault", "cast", "receive", target,
             "--session", options["session"], "--yes", "--json"],
            env={**os.environ, "BLOCKVAULT_CAST_CODE": options["code"]},
            capture_output=True, text=True, check=False, timeout=DEADLINE,
        )  # fmt: skip
        assert received.returncode == 0, received.stderr
        job = ended(admin, job_id)
        assert job["state"] == "done", job
        assert job["progress"]["done"] == job["progress"]["total"] == 1
        pids = subprocess.run(["ip", "netns", "pids", net.sender], capture_output=True, text=True)
        names = [Path(f"/proc/{pid}/comm").read_text().strip() for pid in pids.stdout.split()]
        assert "dnsmasq" not in names  # pxe serve stopped with the cast
    assert filecmp.cmp(disk.path, blank, shallow=False)
    part = disk.partitions[0]
    fsck(extract(blank, part.offset, part.size, tmp_path / "p"), part.fs)
