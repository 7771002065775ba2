"""The dashboard's job pages: forms queue through the same checks as the API (typed
confirmation, CSRF), live parts render progress and results, hostile names escaped."""

from __future__ import annotations

from fastapi.testclient import TestClient

from blockvault.center.context import Center
from tests.center.conftest import add_user, log_in
from tests.center.test_jobs import add_host


def test_pages_queue_jobs_and_show_them(center: Center, client: TestClient) -> None:
    add_user(center, "otto", "operator")
    agent = add_host(center, "pc1")
    csrf = log_in(center, client, "otto")
    for path in ("/jobs", "/snapshots", "/repositories", "/deployments", "/jobs/table"):
        shown = client.get(path)
        assert shown.status_code == 200, path
    restore = {"csrf_token": csrf, "kind": "restore-disk", "host": "pc1", "repo": "/srv/r"}
    restore |= {"snapshot": "latest", "target": "/dev/sdb", "confirm": "sda"}
    refused = client.post("/snapshots", data=restore, follow_redirects=False)
    assert refused.status_code == 422 and "type its name" in refused.text
    no_csrf = client.post("/snapshots", data={**restore, "csrf_token": "x"}, follow_redirects=False)
    assert no_csrf.status_code == 403
    made = client.post("/snapshots", data={**restore, "confirm": "sdb"}, follow_redirects=False)
    assert made.status_code == 303 and made.headers["location"].startswith("/jobs/")

    browse = {**restore, "kind": "browse", "path": "1/etc", "page_number": "1"}
    job_path = client.post("/snapshots", data=browse, follow_redirects=False).headers["location"]
    job_id = int(job_path.rsplit("/", 1)[1])
    taken = client.get("/agent/v1/jobs", headers=agent).json()
    assert [j["params"].get("page") for j in taken if j["id"] == job_id] == [1]
    entries = [{"name": "<script>x</script>", "type": "file", "size": 3, "mtime": None}]
    result = {"path": "1/etc", "page": 1, "page_size": 100, "total": 101, "entries": entries}
    done = {"ok": True, "result": result}
    client.post(f"/agent/v1/jobs/{job_id}/result", json=done, headers=agent)
    page = client.get(job_path).text
    assert "&lt;script&gt;x&lt;/script&gt;" in page and "<script>x" not in page
    assert "Previous page" in page and "Next page" not in page
    live = client.get(f"{job_path}/live")
    assert "Download" in live.text and live.status_code == 286  # ended: htmx stops polling
    listed = client.get("/jobs/table").text
    assert f'href="/jobs/{job_id}"' in listed


def test_only_an_admin_registers_repositories_from_the_page(
    center: Center, client: TestClient
) -> None:
    add_user(center, "otto", "operator")
    add_user(center, "ada", "admin")
    form = {"name": "main", "location": "/srv/main", "keep_daily": "7"}
    csrf = log_in(center, client, "otto")
    assert client.post("/repositories", data={**form, "csrf_token": csrf}).status_code == 403
    csrf = log_in(center, client, "ada")
    added = client.post("/repositories", data={**form, "csrf_token": csrf}, follow_redirects=False)
    assert added.status_code == 303
    again = client.post("/repositories", data={**form, "csrf_token": csrf})
    assert again.status_code == 409 and "exists already" in again.text
    page = client.get("/repositories").text
    assert "/srv/main" in page and "Register a repository" in page
    queued = client.post(
        "/repositories/main/prune", data={"csrf_token": csrf}, follow_redirects=False
    )
    assert queued.status_code == 303
    assert "prune" in client.get(queued.headers["location"]).text
