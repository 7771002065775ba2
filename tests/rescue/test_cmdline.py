"""The kernel command line options of the rescue system, parsed as the kernel splits them."""

from __future__ import annotations

import pytest

from blockvault.errors import RescueOptionError
from blockvault.rescue.cmdline import (
    Job,
    console_devices,
    job_from_cmdline,
    kernel_params,
    kernel_words,
)

# a command line as /proc/cmdline shows it after GRUB passed the build's options
LINE = (
    "BOOT_IMAGE=/live/vmlinuz boot=live live-media-path=/live console=tty0 "
    'console=ttyS0,115200 blockvault.run="-r sftp://backup@nas/repo restore latest /dev/sda '
    '--yes" blockvault.after=reboot quiet'
)


def test_words_are_cut_at_spaces_outside_double_quotes() -> None:
    words = kernel_words(LINE)
    assert words[5] == 'blockvault.run="-r sftp://backup@nas/repo restore latest /dev/sda --yes"'
    assert words[-2:] == ["blockvault.after=reboot", "quiet"]


def test_an_unclosed_quote_runs_to_the_end() -> None:
    assert kernel_words('quiet blockvault.run="disks --json') == [
        "quiet",
        'blockvault.run="disks --json',
    ]


def test_params_lose_the_quotes_around_a_value_as_the_kernel_does() -> None:
    params = dict(kernel_params(LINE))
    assert params["blockvault.run"] == "-r sftp://backup@nas/repo restore latest /dev/sda --yes"
    assert params["quiet"] is None
    assert dict(kernel_params('"blockvault.after=power off"')) == {"blockvault.after": "power off"}


def test_a_run_option_becomes_blockvault_arguments() -> None:
    job = job_from_cmdline(LINE)
    assert job == Job(
        ("-r", "sftp://backup@nas/repo", "restore", "latest", "/dev/sda", "--yes"), "reboot"
    )


def test_single_quotes_inside_the_run_value_group_a_word() -> None:
    job = job_from_cmdline("""blockvault.run="restore latest '/dev/disk/by-id/a b' --yes" """)
    assert job is not None and job.args == ("restore", "latest", "/dev/disk/by-id/a b", "--yes")
    assert job.after == "shell"


def test_cast_receive_takes_code_session_and_target() -> None:
    job = job_from_cmdline(
        "blockvault.cast=receive blockvault.code=ab12-cd34 blockvault.session=lab "
        "blockvault.target=/dev/nvme0n1 blockvault.after=poweroff"
    )
    assert job == Job(
        (
            "cast",
            "receive",
            "--yes",
            "--code",
            "ab12-cd34",
            "--session",
            "lab",
            "/dev/nvme0n1",
        ),
        "poweroff",
    )
    auto = job_from_cmdline("blockvault.cast=receive")
    assert auto is not None and auto.args[-1] == "auto"


def test_no_option_means_no_job() -> None:
    assert job_from_cmdline("BOOT_IMAGE=/live/vmlinuz boot=live quiet") is None
    assert job_from_cmdline("") is None


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("blockvault.runn=x", "blockvault.runn: unknown"),
        ("blockvault.after=halt blockvault.run=disks", "'halt': use one of reboot"),
        ("blockvault.run", "needs a value"),
        ('blockvault.run=""', "needs a value"),
        ("blockvault.run=disks blockvault.cast=receive", "not both"),
        ("blockvault.cast=send", "'send': use receive"),
        ("blockvault.target=/dev/sda", "only goes with blockvault.cast"),
        ("blockvault.after=reboot", "without blockvault.run"),
        ('blockvault.run="restore \'latest /dev/sda"', "cannot split"),
        ("blockvault.run=agent", "'agent' is not for a rescue boot"),
    ],
)
def test_wrong_options_are_one_clear_error(line: str, says: str) -> None:
    with pytest.raises(RescueOptionError) as caught:
        job_from_cmdline(line)
    message = str(caught.value)
    assert says in message
    assert message.startswith("kernel command line option")
    assert "\n" not in message


def test_an_oversized_command_line_is_refused_unread() -> None:
    with pytest.raises(RescueOptionError, match="longer than 64 KiB"):
        job_from_cmdline("x" * (64 * 1024 + 1))


def test_console_devices_are_the_console_options_in_order() -> None:
    assert console_devices(LINE) == ["/dev/tty0", "/dev/ttyS0"]
    assert console_devices("console=../../etc/passwd console=ttyS1,9600n8") == ["/dev/ttyS1"]
