"""Notifications: who hears about a plan's runs, by mail (SMTP) or webhook (JSON POST).

A *target* is a string of a plan's ``notify`` list: ``mailto:ann@example.org`` or an
``http(s)://`` webhook URL, optionally followed by ``#events=failure,success`` (which
events it wants; default failure, overdue and recovery: success is opt-in) and, for a
webhook, ``&template=FILE`` (a JSON body of its own). The fragment is never sent.

What to say is decided from two run records alone (``events``): a failed run is a
*failure*, an ok run after a failed one a *recovery*, any other ok run a *success*; a
plan whose last good backup is too old is *overdue* (the caller decides when, and
says so once per episode: ``OverdueLatch``). An interrupted run says nothing: it runs
again once, and if it never gets through, overdue speaks. Each event is one message.

Delivering never fails a backup: ``deliver`` catches every failure of every target,
reports it as a warning and appends it to the run's log, and returns what happened.
"""

from __future__ import annotations

import json
import os
import re
import smtplib
import socket
import ssl
import string
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Final, Literal, Protocol, get_args

from blockvault.errors import NotifyError, UsageError
from blockvault.events import Noted, Reporter, Warned
from blockvault.plans.model import RunRecord
from blockvault.text import shown


def _version() -> str:
    """Ours, for the User-Agent (not "from blockvault import __version__": that imports
    the top layer)."""
    try:
        return version("blockvault")
    except PackageNotFoundError:  # run from a source tree without installing
        return "unknown"


_VERSION: Final = _version()

__all__ = [
    "DEFAULT_EVENTS",
    "Delivery",
    "Event",
    "EventKind",
    "Notifier",
    "Overdue",
    "OverdueLatch",
    "Sleep",
    "SmtpSettings",
    "Target",
    "deliver",
    "events",
    "notifier_for",
    "parse_target",
    "post",
    "read_log_tail",
    "send_mail",
    "smtp_settings",
    "webhook_body",
]

EventKind = Literal["failure", "success", "overdue", "recovery"]
DEFAULT_EVENTS: Final[frozenset[EventKind]] = frozenset({"failure", "overdue", "recovery"})
HEADLINES: Final[Mapping[EventKind, str]] = {
    "failure": "backup FAILED",
    "success": "backup succeeded",
    "overdue": "backup OVERDUE",
    "recovery": "backup recovered",
}

LOG_TAIL_BYTES: Final = 4096  # of the run's log, at most, in each message
LOG_TAIL_LINES: Final = 40
TEMPLATE_MAX_BYTES: Final = 64 * 1024
RESPONSE_MAX_BYTES: Final = 64 * 1024  # of a webhook's answer, read and dropped
ATTEMPTS: Final = 3  # per message: the first try and two retries
BACKOFF: Final = 2.0  # seconds before the first retry, doubled before each next one
TIMEOUT: Final = 20.0  # seconds for a connection or an answer
MAX_TIMEOUT: Final = 300.0  # a notice must not hold a run's end for long


# -- what happened --------------------------------------------------------------------


@dataclass(frozen=True)
class Overdue:
    """A plan's last good backup is older than its schedule allows (1.25 periods)."""

    plan: str
    last_good: datetime | None  # None: never backed up
    limit: datetime  # the last good backup should have been newer than this


@dataclass(frozen=True)
class Event:
    kind: EventKind
    plan: str
    host: str
    time: datetime  # aware UTC: when the event was decided
    run: RunRecord | None  # the run it is about; None for overdue
    previous: RunRecord | None  # the plan's run before it
    overdue: Overdue | None = None
    log_tail: str = ""  # the last lines of the run's log, bounded

    @property
    def subject(self) -> str:
        headline = HEADLINES[self.kind]
        if self.run is not None and self.run.kind == "check":  # the scheduled check's
            headline = headline.replace("backup", "repository check", 1)
        return shown(f"[blockvault] {self.plan} on {self.host}: {headline}")


def events(
    previous: RunRecord | None,
    current: RunRecord | None,
    overdue: Overdue | None,
    *,
    host: str | None = None,
    now: datetime | None = None,
    was_overdue: bool = False,
) -> list[Event]:
    """What to tell about ``current`` (just finished; None when only checking for
    overdue) given the plan's run before it, plus the overdue episode that began now.
    ``was_overdue``: an overdue notice went out for this plan and no good run since,
    so a good run now is a recovery too (whoever heard "overdue" hears it ended)."""
    host = host if host is not None else socket.gethostname()
    now = now if now is not None else datetime.now(UTC)
    found: list[Event] = []
    if current is not None and current.status in ("ok", "failed"):
        if current.status == "failed":
            kind: EventKind = "failure"
        elif was_overdue or (previous is not None and previous.status == "failed"):
            kind = "recovery"
        else:
            kind = "success"
        tail = read_log_tail(current.log)
        found.append(Event(kind, current.plan, host, now, current, previous, None, tail))
    if overdue is not None and (current is None or current.status != "ok"):
        last = current or previous
        found.append(Event("overdue", overdue.plan, host, now, None, last, overdue))
    return found


class OverdueLatch:
    """Says a plan *became* overdue once per episode: true on the first check that
    finds it overdue, false until a check finds it in time again."""

    def __init__(self) -> None:
        self._overdue: set[str] = set()

    def became_overdue(self, plan: str, overdue: bool) -> bool:
        if not overdue:
            self._overdue.discard(plan)
            return False
        if plan in self._overdue:
            return False
        self._overdue.add(plan)
        return True

    def good_run(self, plan: str) -> bool:
        """A good run ended the plan's episode; whether it was in one."""
        was = plan in self._overdue
        self._overdue.discard(plan)
        return was


def read_log_tail(path: str | None) -> str:
    """The last lines of a run's log, at most LOG_TAIL_BYTES and LOG_TAIL_LINES, each
    made safe for a terminal; "" when there is no log or it cannot be read."""
    if not path:
        return ""
    try:
        with open(path, "rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(0, size - LOG_TAIL_BYTES))
            data = file.read(LOG_TAIL_BYTES)
    except OSError:
        return ""
    lines = data.decode("utf-8", "replace").splitlines()
    if len(data) == LOG_TAIL_BYTES and size > LOG_TAIL_BYTES:
        lines = lines[1:]  # the first is cut
    return "\n".join(shown(line) for line in lines[-LOG_TAIL_LINES:])


# -- where it goes --------------------------------------------------------------------

Security = Literal["starttls", "tls", "none"]
DEFAULT_PORTS: Final[Mapping[Security, int]] = {"starttls": 587, "tls": 465, "none": 25}
SMTP_KEYS: Final = frozenset(
    {"host", "port", "security", "user", "password-file", "from", "ca-file", "timeout"}
)
_ADDRESS = re.compile(r"[^\s@<>()\[\],;:\"\\]{1,64}@[A-Za-z0-9.-]{1,253}")


@dataclass(frozen=True)
class SmtpSettings:
    """The ``[smtp]`` table of the plans file: the server every mailto: target uses."""

    host: str
    port: int
    security: Security = "starttls"
    sender: str = ""  # the From address ("from" in the table)
    user: str | None = None
    password_file: str | None = None  # first line is the password; read when sending
    ca_file: str | None = None  # trust this CA instead of the system's (a private CA)
    timeout: float = TIMEOUT


def smtp_settings(table: Mapping[str, Any]) -> SmtpSettings:
    """Check a ``[smtp]`` table and make its settings; ``UsageError`` naming the key."""

    def bad(key: str, why: str) -> UsageError:
        return UsageError(f"[smtp] {key}: {why}")

    unknown = sorted(set(table) - SMTP_KEYS)
    if unknown:
        raise bad(unknown[0], f"unknown key; known: {', '.join(sorted(SMTP_KEYS))}")
    host = table.get("host")
    if not isinstance(host, str) or not re.fullmatch(r"[A-Za-z0-9.:_-]{1,253}", host):
        raise bad("host", "give the mail server's host name or address")
    security = table.get("security", "starttls")
    if security not in get_args(Security):
        raise bad("security", f"{security!r}: give starttls, tls or none")
    port = table.get("port", DEFAULT_PORTS[security])
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise bad("port", f"{port!r}: give a TCP port, 1-65535")
    sender = table.get("from", f"blockvault@{socket.getfqdn()}")
    if not isinstance(sender, str) or not _ADDRESS.fullmatch(sender):
        raise bad("from", f"{sender!r}: give a mail address such as backup@example.org")
    user, password_file = table.get("user"), table.get("password-file")
    for key, value in (("user", user), ("password-file", password_file)):
        if value is not None and (not isinstance(value, str) or not value.isprintable()):
            raise bad(key, "give a string")
    if (user is None) != (password_file is None):
        raise bad("user", "give user and password-file together, or neither")
    if user is not None and security == "none":
        raise bad("user", "would send the password in clear: use security starttls or tls")
    ca_file = table.get("ca-file")
    if ca_file is not None and (not isinstance(ca_file, str) or not os.path.isfile(ca_file)):
        raise bad("ca-file", f"{ca_file!r} is not a file")
    timeout = table.get("timeout", TIMEOUT)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
        raise bad("timeout", "give seconds, more than 0")
    return SmtpSettings(host, port, security, sender, user, password_file, ca_file, timeout)


@dataclass(frozen=True)
class Target:
    """One parsed notify target: a mail address or a webhook URL, and what it wants."""

    text: str  # as written in the plan
    kind: Literal["email", "webhook"]
    address: str  # the mail address, or the URL without its fragment
    wants: frozenset[EventKind] = DEFAULT_EVENTS
    template: str | None = None  # webhook only: a file holding the JSON body's template
    timeout: float = TIMEOUT  # webhook only: seconds to connect, and to wait for an answer


def parse_target(text: str) -> Target:
    """A plan's notify target, checked; ``UsageError`` saying what is wrong."""
    base, _, fragment = text.partition("#")
    options = urllib.parse.parse_qs(fragment, keep_blank_values=True, strict_parsing=False)
    unknown = sorted(set(options) - {"events", "template", "timeout"})
    if unknown or (fragment and not options):
        raise UsageError(f"notify target {text!r}: unknown option {(unknown or [fragment])[0]!r}")
    wants = DEFAULT_EVENTS
    if "events" in options:
        names = {n.strip() for n in ",".join(options["events"]).split(",")}
        if names == {"all"}:
            names = set(HEADLINES)
        if not names or not names <= set(HEADLINES):
            raise UsageError(
                f"notify target {text!r}: events are failure, success, overdue, recovery or all"
            )
        wants = frozenset(n for n in HEADLINES if n in names)
    template = options.get("template", [None])[-1]
    timeout_text = options.get("timeout", [None])[-1]
    timeout = TIMEOUT
    if timeout_text is not None:
        try:
            timeout = float(timeout_text)
        except ValueError:
            timeout = 0.0
        if not 0 < timeout <= MAX_TIMEOUT:
            raise UsageError(
                f"notify target {text!r}: timeout is seconds, more than 0 and at most "
                f"{MAX_TIMEOUT:g}"
            )
    if base.startswith("mailto:"):
        address = base.removeprefix("mailto:")
        if not _ADDRESS.fullmatch(address):
            raise UsageError(f"notify target {text!r}: not a mail address (mailto:ann@example.org)")
        if template is not None or timeout_text is not None:
            raise UsageError(
                f"notify target {text!r}: template and timeout are for webhooks "
                "(a mail's timeout is in [smtp])"
            )
        return Target(text, "email", address, wants)
    url = urllib.parse.urlsplit(base)
    if url.scheme not in ("http", "https") or not url.hostname or not base.isprintable():
        raise UsageError(f"notify target {text!r}: use mailto:ADDRESS or an http(s):// URL")
    if template is not None:
        _load_template(template, text)  # refused now, not at the first failure
    return Target(text, "webhook", base, wants, template, timeout)


# -- how it is said -------------------------------------------------------------------


def _when(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat(timespec="seconds")


def webhook_body(event: Event) -> dict[str, Any]:
    """The documented JSON body of a webhook (docs/user-guide.md), version 1; these are
    also the names a template may use, as ``$name``."""
    run = event.run
    return {
        "version": 1,
        "event": event.kind,
        "plan": event.plan,
        "host": event.host,
        "time": _when(event.time),
        "message": event.subject,
        "run_id": run.run_id if run else None,
        "kind": run.kind if run else None,  # backup, or the scheduled repository check
        "trigger": run.trigger if run else None,
        "status": run.status if run else None,
        "started": _when(run.started) if run else None,
        "ended": _when(run.ended) if run else None,
        "seconds": run.seconds if run else None,
        "error": run.error if run else None,
        "snapshot": run.snapshot if run else None,
        "bytes_read": run.bytes_read if run else None,
        "bytes_new": run.bytes_new if run else None,
        "bytes_stored": run.bytes_stored if run else None,
        "previous_status": event.previous.status if event.previous else None,
        "last_good": _when(event.overdue.last_good) if event.overdue else None,
        "overdue_since": _when(event.overdue.limit) if event.overdue else None,
        "log_tail": event.log_tail,
    }


def _mail_text(event: Event) -> str:
    """The plain-text body of a mail: one field a line, then the tail of the log."""
    fields = webhook_body(event)
    lines = [event.subject.removeprefix("[blockvault] "), ""]
    for name in (
        "plan",
        "host",
        "event",
        "status",
        "trigger",
        "run_id",
        "started",
        "ended",
        "seconds",
        "error",
        "snapshot",
        "bytes_read",
        "bytes_new",
        "bytes_stored",
        "previous_status",
        "last_good",
        "overdue_since",
    ):
        value = fields[name]
        if value is not None:
            shown_value = f"{value:,}" if name.startswith("bytes_") else str(value)
            lines.append(f"{name.replace('_', ' ') + ':':<16}{shown(shown_value)}")
    if event.log_tail:
        where = event.run.log if event.run and event.run.log else "the run's log"
        lines += ["", f"last lines of {shown(where)}:", event.log_tail]
    return "\n".join(lines) + "\n"


def _load_template(path: str, target: str) -> string.Template:
    try:
        with open(path, "rb") as file:
            data = file.read(TEMPLATE_MAX_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"notify target {target!r}: template {path}: {exc.strerror}") from None
    if len(data) > TEMPLATE_MAX_BYTES:
        raise UsageError(f"notify target {target!r}: template {path} is over 64 KiB")
    try:
        template = string.Template(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise UsageError(f"notify target {target!r}: template {path} is not UTF-8") from None
    known = set(webhook_body(_SAMPLE))
    unknown = sorted(set(template.get_identifiers()) - known)
    if unknown or not template.is_valid():
        raise UsageError(
            f"notify target {target!r}: template {path} uses "
            f"{'$' + unknown[0] if unknown else 'a lone $'}; known: "
            + ", ".join(f"${name}" for name in sorted(known))
        )
    try:
        _render(template, _SAMPLE)
    except ValueError as exc:
        raise UsageError(f"notify target {target!r}: template {path} is not JSON: {exc}") from None
    return template


def _render(template: string.Template, event: Event) -> bytes:
    """Each ``$name`` becomes its value as JSON (write it unquoted); the result must be
    JSON, so a template cannot send something a receiver chokes on."""
    values = {name: json.dumps(value) for name, value in webhook_body(event).items()}
    text = template.substitute(values)
    json.loads(text)  # ValueError when it is not JSON
    return text.encode("utf-8")


_SAMPLE = Event("failure", "plan", "host", datetime(2000, 1, 1, tzinfo=UTC), None, None)


# -- sending ----------------------------------------------------------------------------


class Notifier(Protocol):
    target: Target

    def send(self, event: Event) -> None:
        """Deliver one message about ``event``; ``NotifyError`` when it could not be."""


Sleep = Callable[[float], None]


def _with_retries(target: Target, attempt: Callable[[], None], sleep: Sleep) -> None:
    """``attempt`` up to ATTEMPTS times while it fails transiently, waiting BACKOFF
    seconds, then twice as long, between tries."""
    for number in range(ATTEMPTS):
        try:
            attempt()
            return
        except NotifyError as exc:
            if not exc.transient or number == ATTEMPTS - 1:
                raise
        sleep(BACKOFF * 2**number)


class EmailNotifier:
    """One mail per event through the ``[smtp]`` server: STARTTLS (refused if the server
    does not offer it, never a silent fallback to clear text), implicit TLS or none;
    AUTH when a user is set. Certificates are checked against the system's CAs or
    ``ca-file``."""

    def __init__(self, target: Target, smtp: SmtpSettings, *, sleep: Sleep = time.sleep) -> None:
        self.target, self.smtp, self._sleep = target, smtp, sleep

    def message(self, event: Event) -> EmailMessage:
        mail = EmailMessage()
        mail["Subject"] = event.subject
        mail["From"] = self.smtp.sender
        mail["To"] = self.target.address
        mail["Date"] = format_datetime(event.time)
        mail["Message-ID"] = make_msgid(domain=self.smtp.sender.partition("@")[2] or None)
        mail["X-Blockvault-Event"] = event.kind
        mail["X-Blockvault-Plan"] = shown(event.plan)
        mail.set_content(_mail_text(event))
        return mail

    def send(self, event: Event) -> None:
        mail = self.message(event)
        _with_retries(self.target, lambda: self._send_once(mail), self._sleep)

    def _send_once(self, mail: EmailMessage) -> None:
        send_mail(self.smtp, mail, self.target.text)


def send_mail(s: SmtpSettings, mail: EmailMessage, target: str) -> None:
    """One try at handing ``mail`` to the SMTP server; ``NotifyError`` naming ``target``
    (transient when trying again later may help). The center's alerts send this way."""
    try:
        context = ssl.create_default_context(cafile=s.ca_file)
        client: smtplib.SMTP
        if s.security == "tls":
            client = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout, context=context)
        else:
            client = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
        with client:
            if s.security == "starttls":
                client.starttls(context=context)
            if s.user is not None and s.password_file is not None:
                client.login(s.user, _first_line(s.password_file, target))
            client.send_message(mail)
    except smtplib.SMTPResponseException as exc:
        raw = exc.smtp_error
        reply = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        raise NotifyError(
            f"server {s.host}:{s.port} answered {exc.smtp_code} {reply}",
            target=target,
            transient=400 <= exc.smtp_code < 500,
        ) from None
    except smtplib.SMTPNotSupportedError as exc:
        raise NotifyError(
            f"server {s.host}:{s.port}: {exc} (see security and user in [smtp])", target=target
        ) from None
    except ssl.SSLCertVerificationError as exc:
        raise NotifyError(
            f"server {s.host}:{s.port}: certificate not trusted ({exc.verify_message}); "
            "set ca-file in [smtp] for a private CA",
            target=target,
        ) from None
    except (OSError, smtplib.SMTPException) as exc:
        raise NotifyError(
            f"server {s.host}:{s.port}: {exc}", target=target, transient=True
        ) from None


def _first_line(path: str, target: str) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            return file.readline(4096).rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise NotifyError(f"password file {path}: {exc}", target=target) from None


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A webhook that answers with a redirect is misconfigured: say so, do not follow."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class WebhookNotifier:
    """One JSON POST per event (``webhook_body``, or the target's template); 2xx is
    delivered, 5xx, 429 and network failures are retried, the rest is refused."""

    def __init__(self, target: Target, *, sleep: Sleep = time.sleep) -> None:
        self.target, self._sleep = target, sleep
        self._template = _load_template(target.template, target.text) if target.template else None
        self._opener = urllib.request.build_opener(_NoRedirects())

    def body(self, event: Event) -> bytes:
        if self._template is not None:
            return _render(self._template, event)
        return json.dumps(webhook_body(event)).encode("utf-8")

    def send(self, event: Event) -> None:
        request = urllib.request.Request(
            self.target.address,
            data=self.body(event),
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": f"blockvault/{_VERSION}",
                "X-Blockvault-Event": event.kind,
            },
        )
        _with_retries(self.target, lambda: self._post(request), self._sleep)

    def _post(self, request: urllib.request.Request) -> None:
        post(request, self.target.timeout, self.target.text, self._opener)


def post(
    request: urllib.request.Request,
    timeout: float,
    target: str,
    opener: urllib.request.OpenerDirector | None = None,
) -> None:
    """One try at a webhook's POST: 2xx is delivered; otherwise ``NotifyError`` naming
    ``target``, transient for 5xx, 429 and network failures. Redirects are refused, at
    most RESPONSE_MAX_BYTES of the answer are read. The center's alerts post this way."""
    opener = opener if opener is not None else urllib.request.build_opener(_NoRedirects())
    try:
        with opener.open(request, timeout=timeout) as answer:
            answer.read(RESPONSE_MAX_BYTES)
            status = answer.status
    except urllib.error.HTTPError as exc:
        status = exc.code
        exc.close()
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NotifyError(str(reason), target=target, transient=True) from None
    if not 200 <= status < 300:
        raise NotifyError(
            f"the server answered HTTP {status}",
            target=target,
            transient=status >= 500 or status == 429,
        )


def notifier_for(
    target: str | Target, smtp: SmtpSettings | None = None, *, sleep: Sleep = time.sleep
) -> Notifier:
    """The notifier of a plan's target; ``UsageError`` for a bad one, or for mail
    without an ``[smtp]`` table."""
    parsed = target if isinstance(target, Target) else parse_target(target)
    if parsed.kind == "webhook":
        return WebhookNotifier(parsed, sleep=sleep)
    if smtp is None:
        raise UsageError(
            f"notify target {parsed.text!r}: mail needs an [smtp] table (host, from...) "
            "in the plans file"
        )
    return EmailNotifier(parsed, smtp, sleep=sleep)


# -- delivering, never failing --------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    target: str
    event: EventKind
    error: str | None = None  # None: delivered

    @property
    def line(self) -> str:
        verb = "sent" if self.error is None else "could not send"
        tail = "" if self.error is None else f": {self.error}"
        return f"notify: {verb} {self.event} notice to {self.target}{tail}"


def deliver(event: Event, notifiers: Iterable[Notifier], reporter: Reporter) -> list[Delivery]:
    """Send ``event`` to every notifier that wants it. A failure is reported (Warned),
    appended to the run's log and returned, never raised: a backup that worked must
    not fail because a mail server is down."""
    done = []
    for notifier in notifiers:
        if event.kind not in notifier.target.wants:
            continue
        try:
            notifier.send(event)
            delivery = Delivery(notifier.target.text, event.kind)
        except NotifyError as exc:
            delivery = Delivery(notifier.target.text, event.kind, str(exc))
        except Exception as exc:  # a bug here must not fail the backup either
            delivery = Delivery(notifier.target.text, event.kind, f"{type(exc).__name__}: {exc}")
        reporter(Noted(delivery.line) if delivery.error is None else Warned(delivery.line))
        done.append(delivery)
    _append_to_log(event.run.log if event.run else None, done)
    return done


def _append_to_log(path: str | None, deliveries: Sequence[Delivery]) -> None:
    if not path or not deliveries:
        return
    try:
        with open(path, "a", encoding="utf-8") as log:
            for delivery in deliveries:
                log.write(shown(delivery.line) + "\n")
    except OSError:
        pass  # the reporter has it; a log that cannot be written must not fail the run
