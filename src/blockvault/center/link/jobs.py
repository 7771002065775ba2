"""The agent's side of jobs: take them from the center, run them, report back.

``serve_jobs`` long-polls ``/agent/v1/jobs`` and runs each job in a thread of its
own, at most ``AgentContext.parallel`` at once, posting progress, log lines and the
result. Operations that read a snapshot (browse, download, restore of files, check,
verify, run a plan) run ``blockvault`` itself as a child process: it cleans up after
itself when a cancel terminates it, and a crash in it is not the agent's. A disk
restore runs the library in-process instead, so its progress is the bytes the
pipeline really wrote.

The agent trusts the center for what to do, not for where: it refuses to restore
onto the disk holding its root filesystem or onto a mounted target, whatever the job
says, and checks the typed confirmation again. No kind deletes snapshots: those are
the center's maintenance role's, and an unknown kind is refused.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from blockvault.center.link.client import LinkClient
from blockvault.errors import BlockvaultError, CenterUnreachable, Interrupted

__all__ = ["AgentContext", "JobFailed", "serve_jobs", "system_disk"]

POLL_WAIT: Final = 25  # seconds a poll waits at the center
PIECE: Final = 512 * 1024  # bytes of a download per upload request
OUTPUT_LIMIT: Final = 64 * 1024 * 1024  # bytes of a child's JSON output we read
PROGRESS_EVERY: Final = 1.0  # seconds between progress reports
RETRY_MAX: Final = 60.0  # seconds between polls while the center is unreachable


@dataclass(frozen=True)
class AgentContext:
    """What jobs need from the agent: its plans file (for ``run-plan`` and for the
    password files of the repositories its plans write to), an optional way to start a
    plan in the agent's own scheduler, and how many jobs may run at once."""

    plans: Path
    run_plan: Callable[[str], None] | None = None  # None: ``blockvault plan run`` as a child
    parallel: int = 2
    command: tuple[str, ...] = (sys.executable, "-m", "blockvault")
    poll_wait: int = POLL_WAIT  # seconds a poll waits at the center (also: how soon a stop ends it)

    @classmethod
    def default(cls) -> AgentContext:
        return cls(Path(os.environ.get("BLOCKVAULT_PLANS", "/etc/blockvault/plans.toml")))


class JobFailed(Exception):
    """A job that cannot be done; the message goes to the center as its error."""


def serve_jobs(
    client: LinkClient, stop: threading.Event, context: AgentContext | None = None
) -> None:
    """Take and run jobs until ``stop`` is set (the agent's link starts this in a
    thread; ``context`` None: the defaults, as ``blockvault agent`` has them)."""
    context = context or AgentContext.default()
    running: list[threading.Thread] = []
    waiting: list[dict[str, Any]] = []
    pause = 1.0
    while not stop.is_set():
        running = [t for t in running if t.is_alive()]
        while waiting and len(running) < context.parallel:
            job = waiting.pop(0)
            thread = threading.Thread(
                target=_Job(client, job, context, stop).run, name=f"job-{job['id']}", daemon=True
            )
            thread.start()
            running.append(thread)
        if waiting or len(running) >= context.parallel:
            stop.wait(0.2)
            continue
        try:
            wait = context.poll_wait
            answer = client.call("GET", f"/agent/v1/jobs?wait={wait}", timeout=wait + 15)
            answer.raise_for_status()
            taken = answer.json()
        except Exception:  # unreachable, refused (revoked), an HTTP error: the link's
            # heartbeat reports those; jobs wait and ask again, less often
            stop.wait(pause)
            pause = min(pause * 2, RETRY_MAX)
            continue
        pause = 1.0
        if isinstance(taken, list):
            waiting.extend(j for j in taken if isinstance(j, dict) and isinstance(j.get("id"), int))
    for thread in running:
        thread.join(5)


class _Job:
    """One job's run: its reports to the center and its cancel flag."""

    def __init__(
        self, client: LinkClient, job: dict[str, Any], context: AgentContext, stop: threading.Event
    ) -> None:
        self.client, self.context, self.stop = client, context, stop
        self.id: int = job["id"]
        self.kind = str(job.get("kind"))
        self.params: dict[str, Any] = job.get("params") or {}
        self.cancelled = threading.Event()
        self._reported = 0.0
        self._total = 0
        self._done = 0

    def _post(self, what: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            answer = self.client.call("POST", f"/agent/v1/jobs/{self.id}/{what}", json=body)
            value = answer.json() if answer.status_code == 200 else {}
        except (CenterUnreachable, ValueError):
            return {}
        if isinstance(value, dict) and value.get("cancel"):
            self.cancelled.set()
        return value if isinstance(value, dict) else {}

    def progress(self, done: int, total: int, message: str = "", *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._reported >= PROGRESS_EVERY:
            self._reported = now
            self._post("progress", {"done": done, "total": total, "message": message})

    def log(self, message: str, level: str = "info") -> None:
        self._post("log", {"level": level, "message": message[:4000]})

    def run(self) -> None:
        handler = _HANDLERS.get(self.kind)
        try:
            if handler is None:
                raise JobFailed(f"this agent runs no {self.kind!r} jobs")
            self.progress(0, 0, f"{self.kind} started", force=True)
            result = handler(self)
        except (JobFailed, BlockvaultError, OSError) as error:
            self.log(str(error), "error")
            self.finish({"ok": False, "error": str(error)})
        except Interrupted as stopped:
            self.finish({"ok": False, "error": str(stopped)})
        else:
            self.finish({"ok": True, "result": result})

    def finish(self, body: dict[str, Any]) -> None:
        """Report the end, retrying while the center is unreachable (until the agent
        stops: the center then fails the job when the host falls silent). A result
        the center refuses (too large) becomes an error it takes."""
        pause = 1.0
        while True:
            try:
                answer = self.client.call("POST", f"/agent/v1/jobs/{self.id}/result", json=body)
            except CenterUnreachable:
                if self.stop.wait(pause):
                    return
                pause = min(pause * 2, RETRY_MAX)
                continue
            if answer.status_code in (400, 413) and body.get("ok"):
                body = {
                    "ok": False,
                    "error": f"the center refused the result: {_detail(answer.text)}",
                }
                continue
            return

    # --- the pieces handlers share ---------------------------------------------------

    def password(self) -> str | None:
        """The repository's password: sent with the job (stored on the center), else
        from the password file of a local plan writing to that repository."""
        if isinstance(self.params.get("password"), str):
            return str(self.params["password"])
        from blockvault.plans.store import PlanBook

        with contextlib.suppress(BlockvaultError):
            for plan in PlanBook.load(self.context.plans).plans.values():
                if plan.repo == self.params.get("repo") and plan.password_file:
                    with open(plan.password_file, encoding="utf-8") as file:
                        return file.readline().rstrip("\n")
        return None

    @contextlib.contextmanager
    def child(self, *args: str, **extra: str) -> Iterator[subprocess.Popen[bytes]]:
        """``blockvault -r REPO ARGS`` as a child process (``extra``: more environment),
        terminated on a cancel."""
        env = {**os.environ, "BLOCKVAULT_PLANS": str(self.context.plans), **extra}
        env.pop("BLOCKVAULT_PASSWORD", None)
        if (password := self.password()) is not None:
            env["BLOCKVAULT_PASSWORD"] = password
        repo = ["-r", str(self.params["repo"])] if "repo" in self.params else []
        process = subprocess.Popen(
            [*self.context.command, *repo, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        watcher = threading.Thread(target=self._watch, args=(process,), daemon=True)
        watcher.start()
        try:
            yield process
        finally:
            if process.poll() is None:
                process.terminate()
            process.wait()

    def _watch(self, process: subprocess.Popen[bytes]) -> None:
        """Ask the center every few seconds whether to go on; stop the child if not."""
        while process.poll() is None:
            if self.cancelled.is_set() or self.stop.is_set():
                process.terminate()
                return
            time.sleep(0.2)
            if time.monotonic() - self._reported >= 3:
                self.progress(self._done, self._total, f"{self.kind} running")

    def json_of(self, *args: str, **extra: str) -> Any:
        """The ``--json`` output of a ``blockvault`` command (its error line if it fails)."""
        with self.child(*args, "--json", **extra) as process:
            assert process.stdout is not None and process.stderr is not None
            out = process.stdout.read(OUTPUT_LIMIT + 1)
            error = process.stderr.read(64 * 1024).decode(errors="replace")
            code = process.wait()
        if self.cancelled.is_set():
            raise JobFailed("cancelled by the center")
        if len(out) > OUTPUT_LIMIT:
            raise JobFailed(f"{args[0]} printed more than {OUTPUT_LIMIT} bytes")
        if code != 0:
            raise JobFailed(_last_line(error) or f"{args[0]} failed with exit code {code}")
        return json.loads(out) if out.strip() else {}


def _address(params: dict[str, Any]) -> str:
    path = str(params.get("path") or "")
    return f"{params['snapshot']}:{path}" if path else str(params["snapshot"])


def _browse(job: _Job) -> dict[str, Any]:
    listed = job.json_of("ls", _address(job.params))
    page, size = int(job.params.get("page", 0)), int(job.params.get("page_size", 100))
    if "partitions" in listed:
        entries = [
            {"name": str(p["number"]), "type": "partition", "size": p["size"], "mtime": None}
            for p in listed["partitions"]
        ]
    else:
        entries = [
            {"name": e["path"], "type": e["kind"], "size": e["size"], "mtime": e["mtime"]}
            for e in listed["entries"]
        ]
    entries.sort(key=lambda e: (e["type"] != "dir", e["name"]))
    return {
        "path": job.params.get("path", ""),
        "page": page,
        "page_size": size,
        "total": len(entries),
        "entries": entries[page * size : (page + 1) * size],
    }


def _restore_files(job: _Job) -> dict[str, Any]:
    destination = Path(job.params["destination"])
    destination.mkdir(parents=True, exist_ok=True)
    path = str(job.params.get("path") or "")
    if path.startswith("/") or not path:  # a file snapshot (or all of it)
        return dict(job.json_of("restore", _address(job.params), str(destination)))
    return dict(job.json_of("extract", _address(job.params), str(destination)))


def _download(job: _Job) -> dict[str, Any]:
    sent = 0
    with job.child("cat", _address(job.params)) as process:
        assert process.stdout is not None and process.stderr is not None
        while piece := process.stdout.read(PIECE):
            body = {"offset": sent, "data": base64.b64encode(piece).decode()}
            answer = job.client.call(
                "POST", f"/agent/v1/jobs/{job.id}/upload", json=body, timeout=120
            )
            if answer.status_code != 200:
                raise JobFailed(f"the center refused the file: {_detail(answer.text)}")
            sent += len(piece)
            job.progress(sent, 0, f"{sent} bytes sent")
        error = process.stderr.read(64 * 1024).decode(errors="replace")
        if process.wait() != 0:
            raise JobFailed(_last_line(error) or "cat failed")
    return {"name": Path(str(job.params["path"])).name}


def _last_line(stderr: str) -> str:
    """A failed command's error: its last line, without the program's prefix."""
    lines = [x.strip() for x in stderr.splitlines() if x.strip()]
    return lines[-1].removeprefix("blockvault: error: ") if lines else ""


def _detail(text: str) -> str:
    with contextlib.suppress(ValueError):
        value = json.loads(text)
        if isinstance(value, dict) and "detail" in value:
            return str(value["detail"])
    return text[:200]


def _verify(job: _Job) -> dict[str, Any]:
    snapshot = job.params.get("snapshot")
    return dict(job.json_of("verify", *([str(snapshot)] if snapshot else [])))


def _check(job: _Job) -> dict[str, Any]:
    return dict(job.json_of("check", *(["--read-data"] if job.params.get("read_data") else [])))


def _run_plan(job: _Job) -> dict[str, Any]:
    name = str(job.params["plan"])
    if job.context.run_plan is not None:
        job.context.run_plan(name)
        return {"plan": name, "started": True}
    with job.child("--plans", str(job.context.plans), "plan", "run", name) as process:
        assert process.stderr is not None
        error = process.stderr.read(64 * 1024).decode(errors="replace")
        if process.wait() != 0:
            raise JobFailed(_last_line(error) or f"plan {name} failed")
    return {"plan": name, "started": True}


def _restore_disk(job: _Job) -> dict[str, Any]:
    """Restore in-process: the progress reported is the bytes the pipeline wrote."""
    import blockvault
    from blockvault.events import Event, TaskAdvanced, TaskStarted, Warned

    target = str(job.params["target"])
    if job.params.get("confirm") != os.path.basename(target):
        raise JobFailed(f"restore onto {target} needs its name typed as the confirmation")
    real = os.path.realpath(target)
    if (system := system_disk()) is not None and _disk_of(real) == system:
        raise JobFailed(f"{target} is this machine's system disk: the agent never restores onto it")

    def reporter(event: Event) -> None:
        if isinstance(event, TaskStarted):
            job._total, job._done = event.total_bytes, 0
        elif isinstance(event, TaskAdvanced):
            job._done += event.done_bytes
            job.progress(job._done, job._total, "restoring")
        elif isinstance(event, Warned):
            job.log(event.message, "warning")
        if job.cancelled.is_set() or job.stop.is_set():
            raise Interrupted("a cancel from the center", 15)

    repo = blockvault.Repository.open(str(job.params["repo"]), passphrase=job.password() or "")
    snapshot = repo.resolve(str(job.params["snapshot"]))
    done = blockvault.restore(
        repo,
        snapshot,
        target,
        partition=job.params.get("partition"),
        confirm=lambda _question: True,  # the user typed the target's name
        reporter=reporter,
    )
    job.progress(job._done, job._total, "restored", force=True)
    return {
        "snapshot": snapshot.id,
        "target": target,
        "bytes_written": getattr(done, "bytes_written", None),
    }


def _cast_receive(job: _Job) -> dict[str, Any]:
    disk = str(job.params["disk"])
    if (system := system_disk()) is not None and _disk_of(os.path.realpath(disk)) == system:
        raise JobFailed(f"{disk} is this machine's system disk: the agent never casts onto it")
    session = str(job.params["session"])
    code = str(job.params["code"])
    return dict(
        job.json_of(
            "cast", "receive", disk, "--session", session, "--yes", BLOCKVAULT_CAST_CODE=code
        )
    )


def _cast_send(job: _Job, *options: str) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", prefix="cast-code-") as key:  # owner-only
        key.write(str(job.params["code"]) + "\n")
        key.flush()
        return dict(
            job.json_of(
                "cast",
                "send",
                str(job.params["snapshot"]),
                "--session",
                str(job.params["session"]),
                "--key-file",
                key.name,
                "--min-receivers",
                str(job.params.get("receivers") or len(job.params["macs"])),
                "--port",
                "0",  # any free one: two deployments from one sender host at once
                *options,
            )
        )


def _pxe_deploy(job: _Job) -> dict[str, Any]:
    """Boot the machines named by MAC into the rescue system with a cast action, wake
    them, send them the snapshot; ``pxe serve`` stops when the cast ends."""
    from blockvault.events import Event, Noted
    from blockvault.rescue.pxe import BootAction, BootActions, PxeServer, PxeSettings
    from blockvault.rescue.wol import wake

    macs = [str(mac) for mac in job.params["macs"]]
    interface = str(job.params["interface"])
    cast = BootAction("cast", str(job.params["session"]))
    settings = PxeSettings(
        interface,
        Path(str(job.params["iso"])),
        BootActions(BootAction("menu"), dict.fromkeys(macs, cast)),
        cast_code=str(job.params["code"]),
        target=job.params.get("target"),
    )

    def reporter(event: Event) -> None:
        if isinstance(event, Noted) and event.message.startswith("boot:"):
            job.log(f"pxe {event.message}")  # which machine asked for its action

    with PxeServer(settings, reporter) as server:
        job.log(f"serving the rescue system on {interface} ({server.base_url})")
        woken = wake(macs, broadcast=server.interface.broadcast, interface=interface)
        job.progress(0, len(macs), f"woke {len(woken)}; casting", force=True)
        sent = _cast_send(job, "--interface", interface)
    job.progress(len(macs), len(macs), "cast done", force=True)
    return {"macs": macs, "cast": sent}


_HANDLERS: Final[dict[str, Callable[[_Job], dict[str, Any]]]] = {
    "browse": _browse,
    "download": _download,
    "restore-files": _restore_files,
    "restore-disk": _restore_disk,
    "verify": _verify,
    "check": _check,
    "run-plan": _run_plan,
    "cast-receive": _cast_receive,
    "cast-send": _cast_send,
    "pxe-deploy": _pxe_deploy,
}


# --- which disk is the system's ----------------------------------------------------------


def _disk_of(device: str) -> str | None:
    """The whole disk (sysfs name, e.g. ``sda``) a block device is or belongs to."""
    try:
        rdev = os.stat(device).st_rdev
    except OSError:
        return None
    return _sysfs_disk(os.major(rdev), os.minor(rdev))


def _sysfs_disk(major: int, minor: int) -> str | None:
    node = Path(f"/sys/dev/block/{major}:{minor}")
    if not node.exists():
        return None
    real = node.resolve()
    return real.parent.name if (real / "partition").exists() else real.name


def system_disk() -> str | None:
    """The disk holding the root filesystem (None when it is on none, as in a
    container's overlay)."""
    st = os.stat("/")
    return _sysfs_disk(os.major(st.st_dev), os.minor(st.st_dev))
