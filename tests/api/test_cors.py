"""CORS as Chunkr answers it (any origin by default, a preflight needs no key), narrowed or
turned off by ``serve --cors-origins``; and OPTIONS listing every method of its path."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.inprocess import InProcessServer, add_key

OTHER_ORIGIN = "https://app.example.com"


def preflight(client: httpx.Client, path: str, method: str) -> httpx.Response:
    return client.options(
        path,
        headers={
            "Origin": OTHER_ORIGIN,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
        },
    )


def test_a_browser_preflight_from_another_origin_gets_the_cors_headers_without_a_key(
    real_server,
):
    with httpx.Client(base_url=real_server.api) as anonymous:
        response = preflight(anonymous, "/task/parse", "POST")
    assert response.status_code == 204, response.text
    assert response.headers["access-control-allow-origin"] == "*"
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed = {
        h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")
    }
    assert {"authorization", "content-type", "idempotency-key"} <= allowed


def test_answers_to_another_origin_carry_the_cors_headers(real_server):
    key = add_key(real_server.db, "alice")
    with httpx.Client(base_url=real_server.api) as browser:
        listed = browser.get("/tasks", headers={"Origin": OTHER_ORIGIN, "Authorization": key})
        refused = browser.get("/tasks", headers={"Origin": OTHER_ORIGIN})
    assert listed.status_code == 200
    assert refused.status_code == 401
    for response in (listed, refused):
        assert response.headers["access-control-allow-origin"] == "*"
        exposed = response.headers["access-control-expose-headers"].lower()
        assert "x-request-id" in exposed and "retry-after" in exposed


@pytest.fixture
def narrow(database):
    server = InProcessServer(database, cors_origins=("https://ok.example",))
    server.start()
    yield server
    server.stop()


def test_cors_origins_narrows_who_may_call(narrow):
    with narrow.client(None) as anonymous:
        ok = anonymous.options(
            "/task/parse",
            headers={"Origin": "https://ok.example", "Access-Control-Request-Method": "POST"},
        )
        other = preflight(anonymous, "/task/parse", "POST")
        simple = anonymous.get("/tasks", headers={"Origin": OTHER_ORIGIN})
    assert ok.status_code == 204
    assert ok.headers["access-control-allow-origin"] == "https://ok.example"
    assert other.status_code == 400 and "Disallowed CORS Origin" in other.text
    assert "access-control-allow-origin" not in simple.headers


def test_no_cors_origins_no_cors_headers(database):
    server = InProcessServer(database, cors_origins=()).start()
    try:
        with server.client(None) as anonymous:
            response = anonymous.get("/tasks", headers={"Origin": OTHER_ORIGIN})
        assert response.status_code == 401
        assert not [h for h in response.headers if h.startswith("access-control-")]
    finally:
        server.stop()


def test_options_lists_every_method_of_each_path(database):
    server = InProcessServer(database).start()
    try:
        with server.client(None) as anonymous:
            for route in server.app.routes:
                methods = getattr(route, "methods", None)
                if not methods or route.path.startswith("/docs"):
                    continue
                path = re.sub(r"\{[^}]+\}", "abc", route.path)
                response = anonymous.request("OPTIONS", server.url + path)
                assert response.status_code == 204, (route.path, response.text)
                allow = {m.strip() for m in response.headers["allow"].split(",")}
                assert allow == set(methods), route.path
    finally:
        server.stop()
