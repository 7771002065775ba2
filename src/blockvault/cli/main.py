"""The ``blockvault`` command: options shared by every command, and error handling."""

from __future__ import annotations

import os
import select
import sys
import traceback
from typing import Any, NoReturn

import click

from blockvault import __version__, interrupts
from blockvault.cli import commands
from blockvault.errors import (
    EXIT_CODES,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_STDOUT_CLOSED,
    BlockvaultError,
    Interrupted,
    UsageError,
)
from blockvault.text import shown

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Group(click.Group):
    """Loads each command when it is used, and turns every error into one line on
    stderr and an exit code (see errors.py)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(commands.COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in commands.COMMANDS:
            commands.register(self, cmd_name)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BlockvaultError as exc:
            click.echo(f"blockvault: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except Interrupted as exc:
            _interrupted(exc)
        except KeyboardInterrupt:  # a SIGINT before install() (or with it replaced)
            _interrupted(Interrupted("SIGINT", EXIT_INTERRUPTED - 128))
        except click.exceptions.Abort as exc:  # a prompt met Ctrl-C or the end of input
            if isinstance(exc.__context__, KeyboardInterrupt):
                _interrupted(Interrupted("SIGINT", EXIT_INTERRUPTED - 128))
            click.echo("blockvault: error: no answer: the input ended at a prompt", err=True)
            sys.exit(UsageError.exit_code)
        except (click.ClickException, click.exceptions.Exit):
            raise
        except OSError as exc:
            if isinstance(exc, BrokenPipeError) and _stdout_closed():
                _quietly_stop()  # else a peer's socket: an error like any other
            if os.environ.get("BLOCKVAULT_DEBUG"):
                traceback.print_exc()
            where = f" ({exc.filename})" if exc.filename else ""
            click.echo(f"blockvault: error: {shown(f'{exc.strerror or exc}{where}')}", err=True)
            sys.exit(1)
        except Exception as exc:
            if os.environ.get("BLOCKVAULT_DEBUG"):
                traceback.print_exc()
            click.echo(
                f"blockvault: internal error: {type(exc).__name__}: {shown(str(exc))} "
                "(set BLOCKVAULT_DEBUG=1 for a traceback, and please report it)",
                err=True,
            )
            sys.exit(EXIT_INTERNAL)


# \b keeps click from rewrapping the table
EPILOG = "\b\nExit codes:\n" + "\n".join(
    f"  {code:>3}  {text}" for code, text in EXIT_CODES.items()
)


@click.group(cls=Group, context_settings=CONTEXT, epilog=EPILOG)
@click.option(
    "-r",
    "--repo",
    envvar="BLOCKVAULT_REPO",
    metavar="REPO",
    help="Repository location: a directory path, sftp://[user@]host[:port]/path or "
    "s3://bucket/prefix. Also from $BLOCKVAULT_REPO.",
)
@click.option(
    "--password-file",
    envvar="BLOCKVAULT_PASSWORD_FILE",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="Read the passphrase of an encrypted repository from FILE (first line). "
    "Else $BLOCKVAULT_PASSWORD, else a prompt.",
)
@click.option(
    "--s3-endpoint",
    metavar="URL",
    help="Endpoint of an S3-compatible server for s3:// repositories, such as "
    "http://minio.lan:9000. Else $AWS_ENDPOINT_URL, else AWS itself.",
)
@click.option(
    "--host",
    metavar="H",
    help="Only snapshots made on host H: what 'latest' means (see SNAPSHOT above), "
    "what 'snapshots' lists and what 'prune' considers.",
)
@click.option(
    "--source",
    metavar="S",
    help="Only snapshots of disk S (for 'latest', 'snapshots' and 'prune'): a device or "
    "image path, or an identity as 'snapshots --json' shows it (wwn:…, serial:…, image:…).",
)
@click.option(
    "--plans",
    envvar="BLOCKVAULT_PLANS",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="The plans file of 'plan', 'status' and 'agent' (their history database lies "
    "beside it). Default: /etc/blockvault/plans.toml. Also from $BLOCKVAULT_PLANS.",
)
@click.version_option(__version__, "-V", "--version")
@click.pass_context
def cli(
    ctx: click.Context,
    repo: str | None,
    password_file: str | None,
    s3_endpoint: str | None,
    host: str | None,
    source: str | None,
    plans: str | None,
) -> None:
    """blockvault: image disks and partitions into a deduplicated, compressed repository.

    Only the blocks each filesystem uses are read (ext2/3/4, FAT, NTFS, swap);
    boot areas are always kept. Exit codes: 0 ok, 1 error, 2 bad usage or refused
    target, 3 repository problem, 4 damaged data, 130/143/129 interrupted by
    SIGINT/SIGTERM/SIGHUP (after cleaning up; the last line says what was left).

    \b
    SNAPSHOT, wherever a command takes one, is:
      ID        a snapshot id, or any prefix of it that only one snapshot has
      latest    the newest readable snapshot, if the repository (narrowed by
                --host and --source) holds snapshots of one source only: one
                host, one disk, one set of imaged partitions; with several it
                is an error that lists them
    """
    ctx.obj = {
        "repo": repo,
        "password_file": password_file,
        "s3_endpoint": s3_endpoint,
        "host": host,
        "source": source,
        "plans": plans,
    }
    if s3_endpoint:
        # the S3 backend reads it like boto3 does; this reaches every way a command
        # opens a repository (the S3-only variable, so other AWS tools are not redirected)
        os.environ["AWS_ENDPOINT_URL_S3"] = s3_endpoint


def main() -> None:
    # the one place signals become exceptions: SIGINT, SIGTERM and SIGHUP raise
    # Interrupted, so every command cleans up on the way out (blockvault/interrupts.py)
    interrupts.install()
    try:
        try:
            cli(prog_name="blockvault")
        finally:
            sys.stdout.flush()  # output still buffered meets a closed pipe here
    except Interrupted as exc:  # before a command ran: parsing options, loading it
        _interrupted(exc)
    except BrokenPipeError:
        _quietly_stop()


def _stdout_closed() -> bool:
    """Whether whoever read our stdout has gone (``ls | head``): the kernel flags the
    write end of a pipe whose reader closed as in error."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):  # no stdout at all
        return True


def _quietly_stop() -> NoReturn:
    """Stop the way ``cat`` does when its reader goes: no message, and the status a
    shell shows for a death by SIGPIPE. The rest of the output goes to /dev/null, so
    the interpreter's final flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    sys.exit(EXIT_STDOUT_CLOSED)


def _interrupted(exc: Interrupted) -> NoReturn:
    """One line on what the interrupted command left (see errors.Interrupted), and
    the exit code 128 + signal."""
    click.echo(f"blockvault: {exc}", err=True)
    sys.exit(exc.exit_code)
