"""The hosts a dashboard user sees, with how each is doing.

The facts and the one word per host (``HostStatus.state``) are the fleet's
(``center.fleet.host_statuses``: the same the API reports and the alerts judge); this
module only picks the hosts the user may see, in name order.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from blockvault.center import fleet as facts
from blockvault.center.auth import Principal
from blockvault.center.models import Group, Host

__all__ = ["fleet"]


def fleet(
    session: Session, now: datetime, who: Principal, hosts: Iterable[int] | None = None
) -> list[facts.HostStatus]:
    """Every host ``who`` sees (or those of ``hosts``), by name, with its status."""
    query = select(Host, Group.name).outerjoin(Group, Host.group_id == Group.id)
    if hosts is not None:
        query = query.where(Host.id.in_(list(hosts)))
    visible = [h for h, g in session.execute(query.order_by(Host.name)) if who.sees(g)]
    return facts.host_statuses(session, visible, now)
