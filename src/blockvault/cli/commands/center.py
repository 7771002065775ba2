"""``blockvault center``: the Backup Center server and its administration.

The group's subcommands come from one module per part of the center (state and
serving, enrolment, jobs and repositories, alerts), each with ``register(group)``.
"""

from __future__ import annotations

import click

from blockvault.cli.commands import center_agents, center_alerts, center_core, center_jobs


def register(group: click.Group) -> None:
    @group.group()
    def center() -> None:
        """Run and administer a Backup Center: one server for the agents of many
        machines, with a web dashboard and a REST API (`center init`, then `center
        serve`)."""

    for part in (center_core, center_agents, center_jobs, center_alerts):
        part.register(center)
