"""Notifications against real servers on loopback: an SMTP server (aiosmtpd) with
STARTTLS or implicit TLS on a certificate made here and AUTH, and an HTTP server that
records webhook bodies. The oracle is what the servers received, parsed by the
standard library (email, json), never our own rendering."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import ipaddress
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from blockvault.errors import NotifyError, UsageError
from blockvault.events import Event as Progress
from blockvault.events import Noted, Warned
from blockvault.plans.alerts import Alerts
from blockvault.plans.model import Plan, RunRecord
from blockvault.plans.notify import (
    Event,
    Overdue,
    OverdueLatch,
    deliver,
    events,
    notifier_for,
    parse_target,
    smtp_settings,
)
from blockvault.plans.store import History, PlanBook
from blockvault_demo.servers import free_port
from tests.conftest import Hook

UTC = dt.UTC
T0 = dt.datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
USER, PASSWORD = "backup", "s3cret pass"


def run(status: str, run_id: int = 7, *, log: Path | None = None, **more: Any) -> RunRecord:
    return RunRecord(
        plan="nightly",
        run_id=run_id,
        trigger="schedule",
        status=status,  # type: ignore[arg-type]
        started=T0,
        ended=T0 + dt.timedelta(seconds=95),
        bytes_read=3_000_000,
        bytes_new=1_200_000,
        bytes_stored=800_000,
        snapshot="5e7a91c2" if status == "ok" else None,
        error="device /dev/sdz: no such device" if status == "failed" else None,
        log=str(log) if log else None,
        **more,
    )


# -- decisions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("previous", "current", "kinds"),
    [
        (None, "ok", ["success"]),
        ("ok", "ok", ["success"]),
        ("failed", "ok", ["recovery"]),
        ("interrupted", "ok", ["success"]),
        (None, "failed", ["failure"]),
        ("ok", "failed", ["failure"]),
        ("failed", "failed", ["failure"]),
        ("ok", "interrupted", []),
        ("ok", "skipped", []),  # never ran: status shows it, overdue tells if it goes on
        ("failed", "skipped", []),
        ("ok", "running", []),
    ],
)
def test_what_a_finished_run_tells(previous: str | None, current: str, kinds: list[str]) -> None:
    before = run(previous, 6) if previous else None
    found = events(before, run(current), None, host="alpha", now=T0)
    assert [e.kind for e in found] == kinds
    for event in found:
        assert (event.plan, event.host, event.run, event.previous) == (
            "nightly",
            "alpha",
            run(current),
            before,
        )


def test_overdue_is_told_alone_and_not_beside_a_good_run() -> None:
    late = Overdue(
        "nightly", last_good=T0 - dt.timedelta(days=3), limit=T0 - dt.timedelta(hours=30)
    )
    (event,) = events(run("ok", 6), None, late, host="alpha", now=T0)
    assert (event.kind, event.run, event.overdue) == ("overdue", None, late)
    assert [e.kind for e in events(run("ok", 6), run("failed"), late, host="a")] == [
        "failure",
        "overdue",
    ]
    assert [e.kind for e in events(run("failed", 6), run("ok"), late, host="a")] == ["recovery"]


def test_overdue_latch_speaks_once_per_episode() -> None:
    latch = OverdueLatch()
    seen = [latch.became_overdue("p", flag) for flag in (False, True, True, True, False, True)]
    assert seen == [False, True, False, False, False, True]
    assert latch.became_overdue("q", True)  # plans are apart


def test_log_tail_is_bounded_and_safe(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_text("".join(f"line {i}\n" for i in range(5000)) + "evil \x1b[2J end\n")
    (event,) = events(None, run("failed", log=log), None, host="a")
    lines = event.log_tail.splitlines()
    assert len(lines) == 40 and len(event.log_tail) <= 4096
    assert lines[-1] == "evil \\x1b[2J end" and lines[-2] == "line 4999"


# -- targets and settings -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("mailto:not an address", "not a mail address"),
        ("mailto:ann@example.org\nBcc: eve@evil", "not a mail address"),
        ("ftp://example.org/hook", "use mailto:ADDRESS"),
        ("https:///nohost", "use mailto:ADDRESS"),
        ("https://example.org/h#events=sometimes", "events are"),
        ("https://example.org/h#colour=red", "unknown option 'colour'"),
        ("mailto:ann@example.org#template=/etc/passwd", "for webhooks"),
        ("mailto:ann@example.org#timeout=5", "for webhooks"),
        ("https://example.org/h#timeout=0", "timeout is seconds"),
        ("https://example.org/h#timeout=soon", "timeout is seconds"),
        ("https://example.org/h#timeout=301", "at most 300"),
        ("https://example.org/h#template=/nonexistent/t.json", "No such file"),
    ],
)
def test_bad_targets_are_refused_up_front(text: str, why: str) -> None:
    with pytest.raises(UsageError, match=why):
        parse_target(text)


def test_target_events() -> None:
    assert parse_target("mailto:ann@example.org").wants == {"failure", "overdue", "recovery"}
    assert parse_target("https://h.example/x#events=success,failure").wants == {
        "success",
        "failure",
    }
    assert len(parse_target("http://h.example/x#events=all").wants) == 4


@pytest.mark.parametrize(
    ("table", "why"),
    [
        ({}, "host"),
        ({"host": "mx", "security": "ssl"}, "security"),
        ({"host": "mx", "port": 70000}, "port"),
        ({"host": "mx", "user": "u"}, "together"),
        ({"host": "mx", "user": "u", "password-file": "/p", "security": "none"}, "in clear"),
        ({"host": "mx", "from": "me"}, "from"),
        ({"host": "mx", "relay": "x"}, "unknown key"),
    ],
)
def test_bad_smtp_settings_are_refused(table: dict[str, Any], why: str) -> None:
    with pytest.raises(UsageError, match=r"\[smtp\] .*" + why):
        smtp_settings(table)


def test_mail_needs_an_smtp_table() -> None:
    with pytest.raises(UsageError, match=r"\[smtp\] table"):
        notifier_for("mailto:ann@example.org", None)


# -- a real SMTP server ---------------------------------------------------------------------


@dataclass
class Certificate:
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for 127.0.0.1, made here."""
    where = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "blockvault test mail")])
    now = dt.datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    paths = Certificate(where / "cert.pem", where / "key.pem")
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@dataclass
class Mailbox:
    messages: list[EmailMessage] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    refuse: int = 0  # answer this many messages with 451 first

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.refuse:
            self.refuse -= 1
            return "451 try again later"
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        return "250 OK"

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            USER.encode(),
            PASSWORD.encode(),
        )
        if ok:
            self.logins.append(mechanism)
        return AuthResult(success=ok, handled=False)  # handled: no 535 would be sent


@pytest.fixture
def mail_server(
    certificate: Certificate, tmp_path: Path
) -> Iterator[Callable[[str], tuple[Mailbox, dict[str, Any]]]]:
    """Start an SMTP server ("starttls" or "tls") requiring AUTH; give its mailbox and
    the [smtp] table that reaches it."""
    import ssl

    started: list[Controller] = []

    def start(security: str) -> tuple[Mailbox, dict[str, Any]]:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certificate.cert, certificate.key)
        box = Mailbox()
        port = free_port()
        kwargs: dict[str, Any] = {
            "authenticator": box.authenticate,
            "auth_required": True,
            # smtplib falls back from PLAIN to LOGIN after a 535, and aiosmtpd's LOGIN
            # then waits for a line smtplib never sends: offer PLAIN alone
            "auth_exclude_mechanism": ["LOGIN"],
        }
        if security == "starttls":
            kwargs |= {"tls_context": context, "require_starttls": True}
        else:
            # aiosmtpd only counts STARTTLS as TLS for AUTH; this whole session is TLS
            kwargs |= {"ssl_context": context, "auth_require_tls": False}
        controller = Controller(box, hostname="127.0.0.1", port=port, **kwargs)
        controller.start()
        started.append(controller)
        password = tmp_path / "smtp-password"
        password.write_text(PASSWORD + "\n")
        table = {
            "host": "127.0.0.1",
            "port": port,
            "security": security,
            "user": USER,
            "password-file": str(password),
            "from": "blockvault@alpha.example.org",
            "ca-file": str(certificate.cert),
        }
        return box, table

    yield start
    for controller in started:
        controller.stop()


def one_event(kind: str, tmp_path: Path) -> Event:
    log = tmp_path / "run-7.log"
    log.write_text("reading /dev/sdz\nerror: device /dev/sdz: no such device\n")
    status = "failed" if kind == "failure" else "ok"
    previous = run("failed", 6) if kind == "recovery" else run("ok", 6)
    (event,) = events(previous, run(status, log=log), None, host="alpha")
    assert event.kind == kind
    return event


@pytest.mark.parametrize("security", ["starttls", "tls"])
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_a_failure_mail_arrives_with_its_fields(
    mail_server: Callable[[str], tuple[Mailbox, dict[str, Any]]],
    security: str,
    tmp_path: Path,
) -> None:
    box, table = mail_server(security)
    notifier = notifier_for("mailto:ann@example.org", smtp_settings(table))
    notes: list[Progress] = []
    event = one_event("failure", tmp_path)
    (delivery,) = deliver(event, [notifier], notes.append)
    assert delivery.error is None
    assert box.logins and len(box.messages) == 1
    mail = box.messages[0]
    assert mail["To"] == "ann@example.org"
    assert mail["From"] == "blockvault@alpha.example.org"
    assert mail["Subject"] == "[blockvault] nightly on alpha: backup FAILED"
    assert mail["X-Blockvault-Event"] == "failure"
    body = mail.get_content()
    for line in (
        "plan:           nightly",
        "host:           alpha",
        "status:         failed",
        "error:          device /dev/sdz: no such device",
        "bytes read:     3,000,000",
        "error: device /dev/sdz: no such device",  # the log's tail
    ):
        assert line in body, (line, body)
    assert isinstance(notes[0], Noted)
    assert "sent failure notice to mailto:ann@example.org" in Path(event.run.log).read_text()  # type: ignore[union-attr,arg-type]


def test_success_mail_only_to_targets_that_ask(
    mail_server: Callable[[str], tuple[Mailbox, dict[str, Any]]], tmp_path: Path
) -> None:
    box, table = mail_server("starttls")
    smtp = smtp_settings(table)
    quiet = notifier_for("mailto:quiet@example.org", smtp)
    chatty = notifier_for("mailto:chatty@example.org#events=all", smtp)
    deliver(one_event("success", tmp_path), [quiet, chatty], lambda e: None)
    deliver(one_event("recovery", tmp_path), [quiet, chatty], lambda e: None)
    sent = [(m["To"], m["X-Blockvault-Event"]) for m in box.messages]
    assert sent == [
        ("chatty@example.org", "success"),
        ("quiet@example.org", "recovery"),
        ("chatty@example.org", "recovery"),
    ]
    assert "snapshot:       5e7a91c2" in box.messages[0].get_content()


def test_busy_mail_server_is_tried_again(
    mail_server: Callable[[str], tuple[Mailbox, dict[str, Any]]], tmp_path: Path
) -> None:
    box, table = mail_server("starttls")
    box.refuse = 1
    waits: list[float] = []
    notifier = notifier_for("mailto:ann@example.org", smtp_settings(table), sleep=waits.append)
    (delivery,) = deliver(one_event("failure", tmp_path), [notifier], lambda e: None)
    assert delivery.error is None and waits == [2.0] and len(box.messages) == 1


def test_untrusted_certificate_is_refused(
    mail_server: Callable[[str], tuple[Mailbox, dict[str, Any]]], tmp_path: Path
) -> None:
    box, table = mail_server("starttls")
    del table["ca-file"]
    waits: list[float] = []
    notifier = notifier_for("mailto:ann@example.org", smtp_settings(table), sleep=waits.append)
    with pytest.raises(NotifyError, match="certificate not trusted") as caught:
        notifier.send(one_event("failure", tmp_path))
    assert not caught.value.transient and waits == [] and box.messages == []


def test_wrong_password_is_not_retried(
    mail_server: Callable[[str], tuple[Mailbox, dict[str, Any]]], tmp_path: Path
) -> None:
    box, table = mail_server("starttls")
    Path(table["password-file"]).write_text("wrong\n")
    waits: list[float] = []
    notifier = notifier_for("mailto:ann@example.org", smtp_settings(table), sleep=waits.append)
    with pytest.raises(NotifyError, match="answered 535"):
        notifier.send(one_event("failure", tmp_path))
    assert waits == [] and box.messages == []


def test_dead_mail_server_never_fails_the_run(tmp_path: Path) -> None:
    """Nothing listens on the [smtp] port: each attempt is refused, the failure is
    reported, logged and returned, and the runner's callback returns normally."""
    plans_file = tmp_path / "plans.toml"
    book = PlanBook(plans_file, {"nightly": plan_to("mailto:ann@example.org")})
    book.settings["smtp"] = {"host": "127.0.0.1", "port": free_port(), "security": "none"}
    book.save()
    log = tmp_path / "run.log"
    log.write_text("backup done\n")
    notes: list[Progress] = []
    waits: list[float] = []
    alerts = Alerts(plans_file, notes.append, host="alpha", sleep=waits.append)
    alerts.on_finished(run("failed", log=log), run("ok", 6))  # returns: nothing raised
    assert waits == [2.0, 4.0]  # three attempts
    (warning,) = notes
    assert isinstance(warning, Warned)
    assert "could not send failure notice to mailto:ann@example.org" in warning.message
    assert "Connection refused" in warning.message
    assert warning.message in log.read_text()


def plan_to(*targets: str) -> Plan:
    return Plan(
        name="nightly",
        repo="/srv/repo",
        source_kind="disk",
        sources=("/dev/sdz",),
        schedule="daily 02:00",
        notify=targets,
    )


# -- a real HTTP server -------------------------------------------------------------------------


def test_webhook_body_as_documented(hook: Hook, tmp_path: Path) -> None:
    notifier = notifier_for(hook.url)
    (delivery,) = deliver(one_event("failure", tmp_path), [notifier], lambda e: None)
    assert delivery.error is None
    ((headers, raw),) = hook.bodies
    assert headers["Content-Type"] == "application/json"
    body = json.loads(raw)
    assert body == {
        "version": 1,
        "event": "failure",
        "plan": "nightly",
        "host": "alpha",
        "time": body["time"],
        "message": "[blockvault] nightly on alpha: backup FAILED",
        "run_id": 7,
        "kind": "backup",
        "trigger": "schedule",
        "status": "failed",
        "started": "2026-03-01T02:00:00+00:00",
        "ended": "2026-03-01T02:01:35+00:00",
        "seconds": 95.0,
        "error": "device /dev/sdz: no such device",
        "snapshot": None,
        "bytes_read": 3_000_000,
        "bytes_new": 1_200_000,
        "bytes_stored": 800_000,
        "previous_status": "ok",
        "last_good": None,
        "overdue_since": None,
        "log_tail": "reading /dev/sdz\nerror: device /dev/sdz: no such device",
    }
    dt.datetime.fromisoformat(body["time"])


def test_webhook_overdue_body(hook: Hook) -> None:
    late = Overdue("nightly", last_good=T0, limit=T0 + dt.timedelta(hours=30))
    (event,) = events(run("ok", 6), None, late, host="alpha")
    deliver(event, [notifier_for(hook.url)], lambda e: None)
    body = json.loads(hook.bodies[0][1])
    assert (body["event"], body["status"], body["last_good"], body["overdue_since"]) == (
        "overdue",
        None,
        "2026-03-01T02:00:00+00:00",
        "2026-03-02T08:00:00+00:00",
    )


def test_webhook_template(hook: Hook, tmp_path: Path) -> None:
    template = tmp_path / "chat.json"
    template.write_text('{"text": $message, "fields": {"err": $error, "plan": $plan}}')
    notifier = notifier_for(f"{hook.url}#template={template}")
    deliver(one_event("failure", tmp_path), [notifier], lambda e: None)
    assert json.loads(hook.bodies[0][1]) == {
        "text": "[blockvault] nightly on alpha: backup FAILED",
        "fields": {"err": "device /dev/sdz: no such device", "plan": "nightly"},
    }


@pytest.mark.parametrize(
    ("text", "why"), [('{"a": $nope}', r"\$nope"), ('{"a": $plan', "not JSON")]
)
def test_bad_templates_are_refused_up_front(tmp_path: Path, text: str, why: str) -> None:
    template = tmp_path / "t.json"
    template.write_text(text)
    with pytest.raises(UsageError, match=why):
        parse_target(f"https://h.example/x#template={template}")


def test_webhook_retries_server_errors_not_client_errors(hook: Hook, tmp_path: Path) -> None:
    waits: list[float] = []
    notifier = notifier_for(hook.url, sleep=waits.append)
    hook.answers = [503, 502]
    (delivery,) = deliver(one_event("failure", tmp_path), [notifier], lambda e: None)
    assert delivery.error is None and waits == [2.0, 4.0] and len(hook.bodies) == 3
    hook.answers = [404]
    (delivery,) = deliver(one_event("failure", tmp_path), [notifier], lambda e: None)
    assert delivery.error == f"notification to {hook.url}: the server answered HTTP 404"
    assert waits == [2.0, 4.0] and len(hook.bodies) == 4


def test_webhook_redirect_is_not_followed(hook: Hook, tmp_path: Path) -> None:
    hook.answers = [307]
    notifier = notifier_for(hook.url, sleep=lambda s: None)
    (delivery,) = deliver(one_event("failure", tmp_path), [notifier], lambda e: None)
    assert delivery.error is not None and "HTTP 307" in delivery.error
    assert len(hook.bodies) == 1


def test_each_event_is_one_message(hook: Hook, tmp_path: Path) -> None:
    late = Overdue("nightly", last_good=None, limit=T0)
    found = events(run("ok", 6), replace(run("failed"), log=None), late, host="alpha")
    notifier = notifier_for(f"{hook.url}#events=all")
    for event in found:
        deliver(event, [notifier], lambda e: None)
    assert [json.loads(b)["event"] for _, b in hook.bodies] == ["failure", "overdue"]


def test_overdue_is_told_once_per_episode(hook: Hook, tmp_path: Path) -> None:
    """The agent's overdue check against a real history: a daily plan whose last good
    run ended 40 hours ago is overdue (more than 1.25 days); told once, not again at
    the next check, and again after a good run and a new episode."""
    plans_file = tmp_path / "plans.toml"
    PlanBook(plans_file, {"nightly": plan_to(hook.url)}).save()
    history = History.beside(plans_file)
    now = dt.datetime.now(UTC)
    record = history.start("nightly", "schedule", now=now - dt.timedelta(hours=40))
    history.finish(replace(record, status="ok"), now=now - dt.timedelta(hours=40))
    alerts = Alerts(plans_file, lambda e: None, host="alpha")
    (sent,) = alerts.check_overdue(now)
    assert sent.error is None and sent.event == "overdue"
    assert alerts.check_overdue(now + dt.timedelta(minutes=1)) == []
    body = json.loads(hook.bodies[0][1])
    assert body["event"] == "overdue" and body["previous_status"] == "ok"
    assert body["last_good"] == (now - dt.timedelta(hours=40)).isoformat(timespec="seconds")
    record = history.start("nightly", "schedule", now=now)
    history.finish(replace(record, status="ok"), now=now)
    assert alerts.check_overdue(now) == []  # in time again: the episode ends
    (again,) = alerts.check_overdue(now + dt.timedelta(hours=31))
    assert again.event == "overdue" and len(hook.bodies) == 2


@pytest.mark.parametrize("between", ["interrupted", "skipped"])
def test_a_run_cut_short_between_a_failure_and_a_good_run_still_recovers(
    hook: Hook, tmp_path: Path, between: str
) -> None:
    plans_file = tmp_path / "plans.toml"
    PlanBook(plans_file, {"nightly": plan_to(hook.url)}).save()
    history = History.beside(plans_file)
    finished = []
    for status in ("failed", between, "ok"):
        record = history.start("nightly", "schedule")
        finished.append(history.finish(replace(record, status=status)))  # type: ignore[arg-type]
    Alerts(plans_file, lambda e: None, host="alpha").on_finished(finished[2], finished[1])
    (body,) = (json.loads(raw) for _, raw in hook.bodies)
    assert body["event"] == "recovery" and body["previous_status"] == "failed"


def test_a_good_run_after_an_overdue_notice_is_a_recovery(hook: Hook, tmp_path: Path) -> None:
    plans_file = tmp_path / "plans.toml"
    PlanBook(plans_file, {"nightly": plan_to(hook.url)}).save()
    history = History.beside(plans_file)
    now = dt.datetime.now(UTC)
    first = history.finish(
        replace(history.start("nightly", "schedule", now=now - dt.timedelta(days=3)), status="ok"),
        now=now - dt.timedelta(days=3),
    )
    alerts = Alerts(plans_file, lambda e: None, host="alpha")
    assert [d.event for d in alerts.check_overdue(now)] == ["overdue"]
    good = history.finish(replace(history.start("nightly", "schedule"), status="ok"))
    alerts.on_finished(good, first)
    alerts.on_finished(good, first)  # the episode ended with the first: a plain success
    kinds = [json.loads(raw)["event"] for _, raw in hook.bodies]
    assert kinds == ["overdue", "recovery"]  # success is not this target's


def test_a_webhook_that_does_not_answer_times_out(tmp_path: Path) -> None:
    """A server that accepts and never answers: the POST gives up after the target's
    timeout, each of the three attempts, and the notice is reported, not raised."""
    import socket
    import time

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/hook#timeout=0.5"
        notifier = notifier_for(url, sleep=lambda s: None)
        started = time.monotonic()
        (delivery,) = deliver(one_event("failure", tmp_path), [notifier], lambda e: None)
        took = time.monotonic() - started
    assert delivery.error is not None and "timed out" in delivery.error
    assert 1.5 <= took < 10
