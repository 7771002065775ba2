"""Telling targets: one message per delivery row, sent by its own worker so that a
slow or dead mail server never holds up finding conditions.

A round (``deliver``) takes the deliveries that are due, claims each one (a
conditional UPDATE of its attempt count: two center processes never send the same
message), sends it with a bounded timeout and records the outcome. A failure waits
``RETRY_FIRST``, then twice as long each time (at most ``RETRY_MOST``), for at most
``ATTEMPTS`` tries; the last error stays on the row for the dashboard. Mail goes
through ``plans.notify.send_mail`` and webhooks through ``plans.notify.post``, the
same code the agent's plan notifications use.

A webhook's body is JSON (``body``); a target with a secret gets the header
``X-Blockvault-Signature: sha256=HEX``, the HMAC-SHA256 of the exact body bytes with
the secret as key, so a receiver can tell the center's messages from forged ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any, Final

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from blockvault.center.alerting.config import smtp_of
from blockvault.center.context import Center
from blockvault.center.models import Alert, AlertDelivery, AlertTarget, Group, Host
from blockvault.errors import NotifyError, UsageError
from blockvault.plans.notify import SmtpSettings, parse_target, post, send_mail
from blockvault.text import shown

__all__ = [
    "ATTEMPTS",
    "SIGNATURE_HEADER",
    "Message",
    "deliver",
    "prune_history",
    "send",
    "send_test",
    "signature",
]

ATTEMPTS: Final = 8  # tries of one message: over about four hours
RETRY_FIRST: Final = timedelta(minutes=1)
RETRY_MOST: Final = timedelta(hours=1)
TIMEOUT: Final = 10.0  # seconds a webhook may take to connect or answer
SMTP_TIMEOUT_MOST: Final = 30.0  # the SMTP setting's timeout, bounded for the worker
ROUND_MOST: Final = 50  # deliveries per round; the rest wait for the next
SIGNATURE_HEADER: Final = "X-Blockvault-Signature"

_log = logging.getLogger("blockvault.center.alerts")


@dataclass(frozen=True)
class Message:
    """What one delivery says: the same facts as a mail and as a webhook's JSON."""

    state: str  # "open" | "recovered" | "test"
    event: str
    message: str
    time: datetime
    alert: int | None = None
    condition: str | None = None
    host: str | None = None
    group: str | None = None
    opened: datetime | None = None
    closed: datetime | None = None

    @property
    def subject(self) -> str:
        headline = {"open": "ALERT", "recovered": "RECOVERED", "test": "TEST"}[self.state]
        return shown(f"[blockvault] {headline} {self.event}: {self.message}")[:250]

    def body(self) -> dict[str, Any]:
        """The webhook's JSON body, version 1 (docs/user-guide.md "Alerts")."""
        fields = dataclasses.asdict(self)
        for name in ("time", "opened", "closed"):
            moment = fields[name]
            fields[name] = None if moment is None else moment.astimezone(UTC).isoformat()
        return {"version": 1, **fields}

    def mail(self, sender: str, to: str) -> EmailMessage:
        mail = EmailMessage()
        mail["Subject"] = self.subject
        mail["From"] = sender
        mail["To"] = to
        mail["Date"] = format_datetime(self.time)
        mail["Message-ID"] = make_msgid(domain=sender.partition("@")[2] or None)
        mail["X-Blockvault-Event"] = self.event
        lines = [shown(self.message), ""]
        for name, value in self.body().items():
            if value is not None and name not in ("version", "message"):
                lines.append(f"{name + ':':<12}{shown(str(value))}")
        mail.set_content("\n".join(lines) + "\n")
        return mail


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def send(target: AlertTarget, message: Message, smtp: SmtpSettings | str) -> None:
    """One try at telling ``target`` (mail through ``smtp``, or ``smtp`` says why mail
    cannot be sent); ``NotifyError`` (one line) when it failed."""
    label = f"{target.name} ({target.address})"
    if target.kind == "email":
        if isinstance(smtp, str):
            raise NotifyError(smtp, target=label)
        smtp = dataclasses.replace(smtp, timeout=min(smtp.timeout, SMTP_TIMEOUT_MOST))
        address = parse_target(target.address).address
        send_mail(smtp, message.mail(smtp.sender, address), label)
        return
    body = json.dumps(message.body()).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "blockvault-center",
        "X-Blockvault-Event": message.event,
    }
    if target.secret:
        headers[SIGNATURE_HEADER] = signature(target.secret, body)
    request = urllib.request.Request(target.address, data=body, method="POST", headers=headers)
    post(request, TIMEOUT, label)


def send_test(center: Center, target_id: int) -> None:
    """The test button: a test message to the target now, one try; ``NotifyError``
    (one line) when it could not be sent, ``UsageError`` for an unknown target."""
    with center.sessions() as session:
        target = session.get(AlertTarget, target_id)
        if target is None:
            raise UsageError(f"no alert target {target_id}")
        smtp = _smtp(session)
        session.expunge(target)
    send(
        target,
        Message("test", "test", "a test message from the Backup Center", center.clock()),
        smtp,
    )


def deliver(center: Center) -> list[tuple[int, str | None]]:
    """One round: send what is due; ``(delivery id, error or None)`` for each tried."""
    now = center.clock()
    claimed: list[tuple[int, AlertTarget, Message]] = []
    with center.sessions() as session, session.begin():
        smtp = _smtp(session)
        due = session.execute(
            select(AlertDelivery, Alert, AlertTarget)
            .join(Alert, Alert.id == AlertDelivery.alert_id)
            .join(AlertTarget, AlertTarget.id == AlertDelivery.target_id)
            .where(
                AlertTarget.enabled.is_(True),  # a disabled target's messages wait
                AlertDelivery.sent.is_(None),
                AlertDelivery.attempts < ATTEMPTS,
                AlertDelivery.next_try <= now,
            )
            .order_by(AlertDelivery.next_try, AlertDelivery.id)
            .limit(ROUND_MOST)
        ).all()
        for delivery, alert, target in due:
            wait = min(RETRY_FIRST * 2**delivery.attempts, RETRY_MOST)
            won = session.execute(
                update(AlertDelivery)
                .where(AlertDelivery.id == delivery.id, AlertDelivery.attempts == delivery.attempts)
                .values(attempts=delivery.attempts + 1, next_try=now + wait)
            )
            if won.rowcount == 1:  # type: ignore[attr-defined]
                claimed.append((delivery.id, target, _message(session, alert, delivery.kind, now)))
        session.expunge_all()
    results: list[tuple[int, str | None]] = []
    for delivery_id, target, message in claimed:
        error: str | None = None
        try:
            send(target, message, smtp)
        except NotifyError as exc:
            error = str(exc)
            _log.warning("alerts: %s", error)
        results.append((delivery_id, error))
    if results:
        with center.sessions() as session, session.begin():
            for delivery_id, error in results:
                row = session.get(AlertDelivery, delivery_id)
                if row is None:
                    continue  # its alert's host was removed meanwhile
                row.error = error
                if error is None:
                    row.sent = center.clock()
                    alert_row = session.get(Alert, row.alert_id)
                    if (
                        alert_row is not None
                        and row.kind == "opened"
                        and alert_row.notified is None
                    ):
                        alert_row.notified = row.sent
    return results


def _smtp(session: Session) -> SmtpSettings | str:
    """The center's SMTP server, or why mail cannot be sent (webhooks go on)."""
    try:
        smtp = smtp_of(session)
    except UsageError as exc:
        return f"the SMTP settings cannot be used: {exc}"
    if smtp is None:
        return "no SMTP server is set: `blockvault center alert smtp HOST --from ADDRESS`"
    return smtp


def _message(session: Session, alert: Alert, kind: str, now: datetime) -> Message:
    host = session.get(Host, alert.host_id) if alert.host_id is not None else None
    group = session.get(Group, host.group_id) if host is not None and host.group_id else None
    return Message(
        state="open" if kind == "opened" else "recovered",
        event=alert.event,
        message=alert.message,
        time=now,
        alert=alert.id,
        condition=alert.condition,
        host=host.name if host is not None else None,
        group=group.name if group is not None else None,
        opened=alert.opened,
        closed=alert.closed,
    )


def prune_history(session: Session, before: datetime) -> None:
    """Forget what is over since before ``before``: alerts closed then, with their
    deliveries, and deliveries sent or given up then (housekeeping calls this with the
    audit log's limit, so the tables stop growing with the years)."""
    old = select(Alert.id).where(Alert.closed < before)
    done = AlertDelivery.sent < before
    gave_up = AlertDelivery.sent.is_(None) & (AlertDelivery.attempts >= ATTEMPTS)
    session.execute(
        delete(AlertDelivery).where(
            AlertDelivery.alert_id.in_(old) | done | (gave_up & (AlertDelivery.next_try < before))
        )
    )
    session.execute(delete(Alert).where(Alert.closed < before))
