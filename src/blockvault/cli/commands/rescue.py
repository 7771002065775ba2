"""``blockvault rescue build ISO``: bootable rescue media with blockvault on it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from blockvault.cli import render
from blockvault.cli.commands import json_option


def register(group: click.Group) -> None:
    @group.group()
    def rescue() -> None:
        """Rescue media: boot a machine that has no working system, restore it."""

    @rescue.command("build")
    @click.argument("iso", type=click.Path(dir_okay=False, path_type=Path))
    @click.option(
        "--add-image",
        "images",
        multiple=True,
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        metavar="FILE.bvi",
        help="Put this one-file image on the medium (repeatable); the menu restores it.",
    )
    @click.option("--repo", "preset_repo", metavar="URL", help="Preset repository location.")
    @click.option(
        "--password-file",
        "preset_password",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        help="Put this passphrase file on the medium (anyone holding the stick can read it).",
    )
    @click.option(
        "--ssh-key",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        help="Private key for sftp:// repositories (put on the medium as it is).",
    )
    @click.option(
        "--known-hosts",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        help="known_hosts file naming the SFTP server's key.",
    )
    @click.option(
        "--s3-credentials",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        help="AWS shared credentials file for s3:// repositories (put on the medium "
        "as it is: anyone holding the stick can read it).",
    )
    @click.option(
        "--s3-endpoint",
        "preset_endpoint",
        metavar="URL",
        help="S3-compatible server the preset repository is on (MinIO, Ceph...).",
    )
    @click.option(
        "--boot-options",
        default="",
        metavar="TEXT",
        help="Kernel options of the default boot entry, such as "
        "'blockvault.run=\"restore latest /dev/sda --yes\" blockvault.after=reboot' "
        "(a second entry boots to the menu without them).",
    )
    @click.option(
        "--cache",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Build cache (the Debian root, keyed by its package list). "
        "Default: ~/.cache/blockvault/rescue.",
    )
    @click.option(
        "--check-reproducible",
        is_flag=True,
        help="Build the ISO a second time from the same inputs and fail unless the "
        "two are byte for byte the same.",
    )
    @json_option
    def build(
        iso: Path,
        images: tuple[Path, ...],
        preset_repo: str | None,
        preset_password: Path | None,
        ssh_key: Path | None,
        known_hosts: Path | None,
        s3_credentials: Path | None,
        preset_endpoint: str | None,
        boot_options: str,
        cache: Path | None,
        check_reproducible: bool,
        as_json: bool,
    ) -> None:
        """Build ISO: a hybrid image booting BIOS and UEFI machines from a CD, a USB
        stick (write it with dd) or a VM, into a small Debian live system with
        blockvault and a text menu (restore, clone, receive a deployment, shell).
        The first build downloads Debian packages (needs root and a network); later
        ones reuse the cached root and take under a minute."""
        from blockvault.rescue import build as rescue_build

        preset = rescue_build.Preset(
            repo=preset_repo,
            password_file=preset_password,
            ssh_key=ssh_key,
            known_hosts=known_hosts,
            images=images,
            boot_options=boot_options,
            s3_credentials=s3_credentials,
            s3_endpoint=preset_endpoint,
        )
        cache = cache or rescue_build.DEFAULT_CACHE
        with render.progress(as_json) as reporter:
            summary = rescue_build.build_iso(iso, preset, cache=cache, reporter=reporter)
            if check_reproducible:
                rescue_build.check_reproducible(summary, preset, cache=cache, reporter=reporter)
        if as_json:
            render.emit_json(summary)
            return
        render.say(f"{summary.path}: {render.size(summary.size)} ({summary.size} bytes)")
        render.say(
            f"  Debian {summary.suite}, kernel {summary.kernel}, {summary.debian_packages} packages"
        )
        render.say(f"  Python packages: {', '.join(summary.python_packages)}")
        for name, size in summary.parts.items():
            render.say(f"  {name}: {render.size(size)}")
        render.say(f"  SHA-256: {summary.sha256}")
        render.say(f"  inputs: {summary.manifest} on the medium: {_inputs_line(summary.inputs)}")
        if check_reproducible:
            render.say("  reproducible: a second build gave the same bytes")
        if summary.repo:
            render.say(f"  preset repository: {summary.repo}")
        if summary.boot_options:
            render.say(f"  default boot options: {summary.boot_options}")
        base = "cached" if summary.base_cached else "built"
        layer = "cached" if summary.layer_cached else "built"
        fits = "fits on a 1 GB stick" if summary.fits_stick else "does NOT fit on a 1 GB stick"
        render.say(
            f"  built in {summary.seconds:.0f} s (base {base}, blockvault layer {layer}); {fits}"
        )

    cache_option = click.option(
        "--cache",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Build cache (default: ~/.cache/blockvault/rescue).",
    )

    @rescue.group("cache")
    def cache_group() -> None:
        """The build cache: Debian roots and blockvault layers of earlier builds."""

    @cache_group.command("list")
    @cache_option
    @json_option
    def cache_list(cache: Path | None, as_json: bool) -> None:
        """List the cache's entries, most recently used first."""
        from blockvault.rescue import build as rescue_build
        from blockvault.rescue.cache import cache_entries

        entries = cache_entries(cache or rescue_build.DEFAULT_CACHE)
        if as_json:
            render.emit_json(entries)
            return
        rows = [
            [
                e.name,
                e.kind + (" (current)" if e.current else ""),
                render.size(e.size),
                "-" if e.used is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(e.used)),
                e.base or "",
            ]
            for e in entries
        ]
        render.table(None, ["entry", "kind", "size", "last used (UTC)", "base"], rows)

    @cache_group.command("prune")
    @click.option(
        "--keep",
        type=click.IntRange(min=1),
        default=1,
        show_default=True,
        help="Roots and layers (per root) to keep, most recently used first; the root "
        "this blockvault builds on is always kept.",
    )
    @cache_option
    @json_option
    def cache_prune(keep: int, cache: Path | None, as_json: bool) -> None:
        """Remove cache entries no build will use again (fails while a build runs)."""
        from blockvault.rescue import build as rescue_build
        from blockvault.rescue.cache import prune_cache

        with render.progress(as_json) as reporter:
            removed = prune_cache(cache or rescue_build.DEFAULT_CACHE, keep, reporter=reporter)
        if as_json:
            render.emit_json(removed)
            return
        freed = sum(e.size for e in removed)
        render.say(f"removed {len(removed)} entries, {render.size(freed)} freed")


def _inputs_line(inputs: dict[str, Any]) -> str:
    """What the medium's build.json pins, in one line."""
    debian = inputs["debian"]
    wheel = inputs["blockvault"]
    return (
        f"Debian {debian['suite']} from {debian['mirror']} "
        f"({len(debian['packages'])} packages at recorded versions), {wheel['name']} "
        f"sha256 {wheel['sha256'][:16]}..., SOURCE_DATE_EPOCH={inputs['source_date_epoch']}"
    )
