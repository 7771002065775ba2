"""Fixtures for the demo, the test suite and the benchmarks; never imported by the library.

Glossary:

sample disk
    A disk image built from real tools (``sfdisk``, ``mkfs.*``, ``mkntfs``) holding real
    files (:mod:`blockvault_demo.sample`); boot disks that really boot live in
    :mod:`blockvault_demo.sample_boot`.
demo
    ``blockvault demo``: build a sample disk, back it up, restore and verify it
    (:mod:`blockvault_demo.demo`).
testbed
    Real peers started on this machine for tests and benchmarks: namespace networks
    (:mod:`blockvault_demo.netns`) and OpenSSH / S3 servers on loopback
    (:mod:`blockvault_demo.servers`).

Only ``blockvault.cli.commands.demo`` imports this package (an import-linter contract
keeps the rest of ``blockvault`` out of it), so the library ships no test fixtures in
its import graph.
"""
