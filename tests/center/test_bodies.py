"""Every request body is bounded: past ``BODY_LIMIT`` the center answers 413, whether
the body announced its size or streamed without one; a route may declare more."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from blockvault.center.bodies import BODY_LIMIT, allow_larger, install_body_limit
from blockvault.center.context import Center
from tests.center.conftest import add_user, api_token


def _pieces(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    """A body streamed without a Content-Length (chunked)."""
    while total > 0:
        yield b"x" * min(size, total)
        total -= size


def test_a_body_past_the_limit_is_refused(center: Center, client: TestClient) -> None:
    add_user(center, "ada", "admin")
    auth = {"Authorization": f"Bearer {api_token(center, 'ada', ['admin'])}"}
    big = b'{"name": "' + b"x" * BODY_LIMIT + b'"}'
    # announced: refused before the body is read (also where no login is needed)
    for path in ("/api/v1/groups", "/login"):
        answer = client.post(path, content=big, headers=auth)
        assert answer.status_code == 413, (path, answer.text)
    # streamed without a length: cut off at the bound
    answer = client.post("/api/v1/groups", content=_pieces(BODY_LIMIT + 1), headers=auth)
    assert answer.status_code == 413, answer.text
    # within the bound the route works as before
    answer = client.post("/api/v1/groups", json={"name": "web"}, headers=auth)
    assert answer.status_code == 201, answer.text


def test_a_route_may_declare_a_larger_body() -> None:
    app = FastAPI()
    install_body_limit(app, default=1000)
    allow_larger(app, r"/big/[0-9]+", 5000)

    @app.post("/big/{n}")
    @app.post("/small")
    async def size(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    with TestClient(app) as client:
        assert client.post("/small", content=b"x" * 1000).json() == {"size": 1000}
        assert client.post("/small", content=b"x" * 1001).status_code == 413
        assert client.post("/small", content=_pieces(1001, 100)).status_code == 413
        assert client.post("/big/7", content=b"x" * 5000).json() == {"size": 5000}
        assert client.post("/big/7", content=_pieces(5000, 100)).json() == {"size": 5000}
        assert client.post("/big/7", content=_pieces(5001, 100)).status_code == 413
        assert client.post("/big/x", content=b"x" * 1001).status_code == 413
