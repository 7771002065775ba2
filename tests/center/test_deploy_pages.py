"""The deployments page's bare-metal form: it queues a ``pxe-deploy`` job on the boot
server host through the same checks as the API, refuses bad MACs in one line, and
lists the deployment; a viewer cannot queue one."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select

from blockvault.center.context import Center
from blockvault.center.db import transaction
from blockvault.center.models import Audit, Job
from tests.center.conftest import add_user, api_token, log_in
from tests.center.test_jobs import add_host

FORM = {
    "repo": "/srv/repo",
    "snapshot": "latest",
    "server": "depot",
    "interface": "eth1",
    "iso": "/srv/rescue.iso",
    "macs": "52:54:00:12:34:56\n52-54-00-12-34-57",
}


def test_the_bare_metal_form_queues_a_pxe_deploy_job(center: Center, client: TestClient) -> None:
    add_user(center, "otto", "operator")
    add_host(center, "depot")
    csrf = log_in(center, client, "otto")
    bad = client.post(
        "/deployments/bare-metal", data={**FORM, "macs": "nonsense", "csrf_token": csrf}
    )
    assert bad.status_code == 422 and "not a MAC address" in bad.text
    twice = {**FORM, "macs": "52:54:00:12:34:56 52:54:00:12:34:56", "csrf_token": csrf}
    assert "name each machine once" in client.post("/deployments/bare-metal", data=twice).text
    made = client.post(
        "/deployments/bare-metal", data={**FORM, "csrf_token": csrf}, follow_redirects=False
    )
    assert made.status_code == 303, made.text
    job_id = int(made.headers["location"].rsplit("/", 1)[1])
    with transaction(center.sessions) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.kind == "pxe-deploy" and job.state == "queued"
        assert job.params["macs"] == ["52:54:00:12:34:56", "52:54:00:12:34:57"]
        assert job.params["session"].startswith("deploy-") and len(job.params["code"]) == 20
        assert job.progress == {"done": 0, "total": 2, "message": "queued"}
        actions = session.scalars(select(Audit.action).where(Audit.actor == "user:otto")).all()
        assert "job.deploy-bare-metal" in actions
    listed = client.get("/deployments").text
    assert "52:54:00:12:34:57 (bare metal, by depot)" in listed
    assert job.params["code"] not in client.get(f"/jobs/{job_id}").text  # never shown back


def test_a_viewer_cannot_deploy_to_bare_metal(center: Center, client: TestClient) -> None:
    add_user(center, "vic", "viewer")
    add_host(center, "depot")
    csrf = log_in(center, client, "vic")
    refused = client.post("/deployments/bare-metal", data={**FORM, "csrf_token": csrf})
    assert refused.status_code == 403
    with transaction(center.sessions) as session:
        assert session.scalars(select(Job).where(Job.kind == "pxe-deploy")).first() is None


def test_the_bare_metal_api_refuses_what_the_agent_must_not_be_given(
    center: Center, client: TestClient
) -> None:
    add_user(center, "otto", "operator")
    add_host(center, "depot")
    auth = {"Authorization": f"Bearer {api_token(center, 'otto', ['operate'])}"}
    body = {**FORM, "macs": ["52:54:00:12:34:56"]}

    def refused(change: dict[str, object]) -> str:
        path = "/api/v1/deployments/bare-metal"
        answer = client.post(path, json={**body, **change}, headers=auth)
        assert answer.status_code in (404, 422), answer.text
        return answer.text

    assert "network interface name" in refused({"interface": "../x"})
    assert "device path under /dev" in refused({"target": "/etc/passwd"})
    assert "absolute, normalised path" in refused({"iso": "rescue.iso"})
    assert "MAC" in refused({"macs": ["01:00:5e:00:00:01"]})  # a multicast MAC wakes nobody
    assert "no host nowhere" in refused({"server": "nowhere"})
    made = client.post("/api/v1/deployments/bare-metal", json=body, headers=auth)
    assert made.status_code == 201, made.text
    assert made.json()["host"] == "depot" and "code" not in made.json()["params"]
