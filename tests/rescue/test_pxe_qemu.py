"""A lab deployed over the network: VMs with blank disks boot the rescue system from
``blockvault pxe serve``, receive a multicast deployment, reboot into it.

The lab (:mod:`blockvault_demo.pxelab`) is network namespaces on one bridge: the
lab's own DHCP server hands out the addresses, ``pxe serve`` (proxy-DHCP) only the
boot information. One VM is BIOS (SeaBIOS, QEMU's iPXE option ROM), one UEFI (OVMF);
each gets its own per-MAC action: a cast session of the sample disk for its firmware.
Both run at once under TCG."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from blockvault_demo.pxelab import OK, START, Machine, pxe_lab
from blockvault_demo.sample_boot import build_boot_disk
from tests.conftest import IS_ROOT, blockvault, need_tools

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.root,
    pytest.mark.skipif(not IS_ROOT, reason="namespaces, taps and mmdebstrap need root"),
]

DEPLOY_TIMEOUT = 2400.0  # seconds for both VMs, power-on to the restored system's OK line
BLANK_SIZE = 512 * 1024 * 1024


def test_a_bios_and_a_uefi_machine_boot_from_the_network_receive_a_cast_and_boot_it(
    rescue_iso: Path, tmp_path: Path
) -> None:
    need_tools("ip", "dnsmasq", "qemu-system-x86_64")
    began = time.monotonic()
    repo, code = tmp_path / "repo", tmp_path / "cast.code"
    assert blockvault("-r", repo, "init").returncode == 0
    machines, snapshots = [], {}
    for i, firmware in enumerate(("bios", "uefi")):
        sample = build_boot_disk(firmware, tmp_path / f"sample-{firmware}.img")  # type: ignore[arg-type]
        done = blockvault("-r", repo, "backup", sample.path)
        assert done.returncode == 0, done.stderr
        snapshots[firmware] = done.stdout.split()[-1]
        blank = tmp_path / f"{firmware}.img"
        with open(blank, "wb") as file:
            file.truncate(BLANK_SIZE)
        mac = f"52:54:00:77:00:{i + 1:02x}"
        machines.append(Machine(firmware, firmware, mac, blank, sample.token))  # type: ignore[arg-type]
    made = blockvault("cast", "code")
    assert made.returncode == 0, made.stderr
    code.write_text(made.stdout)
    serve_options = [
        "--action", "menu", "--cast-key-file", str(code),
        *(f"--mac={m.mac}=cast:{m.firmware}" for m in machines),
    ]  # fmt: skip
    casts = {}
    with pxe_lab(tmp_path, rescue_iso, serve_options) as lab:

        def cast_both() -> None:
            """One session per firmware, one after the other (they could run at once
            now, each with its own data group); each waits for its machine to join."""
            for m in machines:
                casts[m.firmware] = lab.cast_send(
                    repo, snapshots[m.firmware], code, session=m.firmware
                )

        sender = threading.Thread(target=cast_both, daemon=True)
        sender.start()
        for machine in machines:
            lab.power_on(machine)
        lab.watch(machines, DEPLOY_TIMEOUT)
        sender.join(120)
        served, leases = lab.serve_log.read_text(), lab.dhcp_log.read_text()
    report = "; ".join(m.summary() for m in machines)
    print(f"PXE deployment of 2 VMs: {time.monotonic() - began:.0f} s wall; {report}")
    for m in machines:
        console = m.console.read_bytes().decode(errors="replace")
        assert m.done, f"{report}; {m.name}'s console: {console[-3000:]}"
        # on one console: the rescue job, its success, then the restored system
        order = [m.seen[marker] for marker in m.markers]
        assert order == sorted(order), report
        assert f"{START} blockvault cast receive --yes --code" in console
        assert OK in console
        assert f"blockvault.session={m.firmware}" in console  # its own per-MAC action
        sent = casts[m.firmware]
        assert sent.returncode == 0, sent.stderr[-2000:]
        assert "verified" in sent.stdout
        assert f"({m.mac}) gets action cast:{m.firmware}" in served
        assert "DHCPACK(cast0)" in leases and m.mac in leases  # its address: the lab's DHCP
    assert served.count("rescue.iso (") == 2  # each machine fetched the ISO over HTTP
