"""Rescue media: a bootable stick or CD that restores machines that do not boot.

Glossary:

rescue system
    A small Debian live system (kernel, live-boot initramfs, systemd) with
    blockvault, disk tools, DHCP networking and an SSH client; built by
    :mod:`~blockvault.rescue.build` into a hybrid ISO (BIOS and UEFI; CD, USB, VM).
preset
    What the build puts on the medium beside the system so that a restore needs no
    typing: a repository, its password file, an SSH key, ``.bvi`` images, and
    kernel options for the default boot entry (:mod:`~blockvault.rescue.runtime`).
menu
    The text menu on every console (:mod:`~blockvault.rescue.menu`).
unattended job
    ``blockvault.run=...`` / ``blockvault.cast=receive`` on the kernel command line
    (:mod:`~blockvault.rescue.cmdline`), run once per boot with its report lines
    (:mod:`~blockvault.rescue.unattended`); its bounded log is kept on the system
    it restored (:mod:`~blockvault.rescue.joblog`).
build cache
    Debian roots and blockvault layers of earlier builds, keyed by their inputs,
    listed and pruned by :mod:`~blockvault.rescue.cache`; every build records its
    exact inputs in ``blockvault/build.json`` on the medium.

The build runs on the host; the menu and the job run inside the rescue system and
drive blockvault through its CLI as subprocesses, as a person at the console would.
"""

from __future__ import annotations

from blockvault.rescue.build import DEFAULT_CACHE, IsoSummary, Preset, build_iso
from blockvault.rescue.cmdline import Job, job_from_cmdline

__all__ = ["DEFAULT_CACHE", "IsoSummary", "Job", "Preset", "build_iso", "job_from_cmdline"]
