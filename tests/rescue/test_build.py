"""The rescue build's inputs: the package list, GRUB's menu, and the refusals that
come before anything is downloaded. (Building and booting the ISO: test_qemu.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from blockvault.errors import RescueBuildError, RescueOptionError
from blockvault.rescue.build import Preset, build_iso, grub_config, package_list
from blockvault.rescue.cmdline import job_from_cmdline
from tests.conftest import IS_ROOT, blockvault, need_tools


def test_the_shipped_package_list_pins_a_suite_and_names_the_essentials() -> None:
    plist = package_list()
    assert plist.suite == "bookworm"
    assert plist.mirror.startswith("http")
    for needed in ("linux-image-amd64", "live-boot", "python3", "gdisk", "openssh-client"):
        assert needed in plist.packages
    assert plist.drops and not any(d.startswith("/") for d in plist.drops)


def test_a_package_list_line_that_is_not_understood_is_an_error() -> None:
    with pytest.raises(RescueBuildError, match="not understood"):
        package_list("suite bookworm\nmirror http://m\nfoo bar baz\n")
    with pytest.raises(RescueBuildError, match="no suite"):
        package_list("python3\n")
    with pytest.raises(RescueBuildError, match="not understood"):
        package_list("suite bookworm\nmirror http://m\npython3\ndrop /etc\n")


def test_grub_passes_each_boot_option_as_one_argument() -> None:
    options = 'blockvault.run="restore latest /dev/vda --yes" blockvault.after=reboot'
    config = grub_config(options)
    assert config.count("menuentry") == 2
    first = next(line for line in config.splitlines() if line.strip().startswith("linux"))
    # one GRUB word each; GRUB hands the kernel an argument with spaces as "word", and
    # the kernel (as a QEMU boot showed: GRUB escapes inner quotes, which it does not
    # read) takes "name=value with spaces" whole
    assert first.endswith(
        "'blockvault.run=restore latest /dev/vda --yes' 'blockvault.after=reboot'"
    )
    as_grub_writes_it = '"blockvault.run=restore latest /dev/vda --yes" blockvault.after=reboot'
    job = job_from_cmdline(as_grub_writes_it)
    assert job is not None and job.args == ("restore", "latest", "/dev/vda", "--yes")
    with pytest.raises(RescueOptionError, match="double quote"):
        grub_config('blockvault.run="a"b"')
    assert "console=ttyS0,115200" in first
    plain = grub_config("")
    assert plain.count("menuentry") == 1
    assert "blockvault." not in plain


@pytest.mark.skipif(not IS_ROOT, reason="the build needs root")
def test_wrong_presets_are_refused_before_anything_is_built(tmp_path: Path) -> None:
    need_tools("mmdebstrap", "mksquashfs", "grub-mkrescue", "xorriso", "mformat")
    iso = tmp_path / "r.iso"
    cache = tmp_path / "cache"
    with pytest.raises(RescueOptionError, match="option after"):
        build_iso(iso, Preset(boot_options="blockvault.after=never"), cache=cache)
    with pytest.raises(RescueBuildError, match="may not hold"):
        build_iso(iso, Preset(boot_options="blockvault.run='disks'"), cache=cache)
    with pytest.raises(RescueBuildError, match="is not a file"):
        build_iso(iso, Preset(images=(tmp_path / "none.bvi",)), cache=cache)
    assert not cache.exists()
    nowhere = tmp_path / "no" / "r.iso"
    done = blockvault("rescue", "build", nowhere, "--cache", cache)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"blockvault: error: rescue media {nowhere}: folder {nowhere.parent} does not exist"
    ]
