"""``blockvault agent install`` and ``agent uninstall``: the agent as a systemd service
(the unit and why each hardening line is there: plans/service.py)."""

from __future__ import annotations

from pathlib import Path

import click

from blockvault.cli.commands import plans_file
from blockvault.plans.service import UNIT_NAME, agent_unit, install_unit, uninstall_unit

__all__ = ["register"]

user_option = click.option(
    "--user",
    is_flag=True,
    help="A unit of your user's systemd (~/.config/systemd/user) instead of the "
    "system's (/etc/systemd/system); such an agent can image only what you may read.",
)
unit_dir_option = click.option(
    "--unit-dir",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Write the unit into DIR instead of systemd's directory (for images of another "
    "system, or to look at it first).",
)


def register(agent: click.Group) -> None:
    @agent.command("install")
    @click.option(
        "--plans",
        "plans",
        type=click.Path(dir_okay=False, path_type=Path),
        metavar="FILE",
        help="The plans file the service runs. Default: the global --plans, else "
        "/etc/blockvault/plans.toml.",
    )
    @user_option
    @click.option(
        "--metrics",
        metavar="HOST:PORT",
        help="Have the service serve Prometheus metrics there (keep it on loopback).",
    )
    @unit_dir_option
    @click.option("--dry-run", "-n", is_flag=True, help="Print the unit; write and enable nothing.")
    @click.pass_context
    def install(
        ctx: click.Context,
        plans: Path | None,
        user: bool,
        metrics: str | None,
        unit_dir: Path | None,
        dry_run: bool,
    ) -> None:
        """Write a hardened systemd unit that runs 'blockvault agent' on the plans
        file, and enable and start it where systemd runs. Run it again after adding
        a plan with a new local repository: the unit lets the agent write only there."""
        path = plans or plans_file(ctx)
        text = agent_unit(path, user=user, metrics=metrics)
        if dry_run:
            click.echo(text, nl=False)
            return
        # the unit lets the agent write only there: it must exist before the agent starts
        path.absolute().parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        done = install_unit(text, user=user, directory=unit_dir)
        click.echo(f"wrote {done.unit}")
        _say_enabled(done.enabled, done.commands, "enabled and started")

    @agent.command("uninstall")
    @user_option
    @unit_dir_option
    def uninstall(user: bool, unit_dir: Path | None) -> None:
        """Stop and disable the agent's systemd service and remove its unit."""
        done = uninstall_unit(user=user, directory=unit_dir)
        click.echo(f"removed {done.unit}")
        _say_enabled(done.enabled, done.commands, "stopped and disabled")


def _say_enabled(enabled: bool, commands: tuple[tuple[str, ...], ...], what: str) -> None:
    if enabled:
        click.echo(f"{UNIT_NAME} {what}")
        return
    steps = "; ".join(" ".join(c) for c in commands)
    click.echo(f"systemd is not running on this machine: nothing {what}; where it runs: {steps}")
