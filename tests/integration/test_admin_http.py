"""The admin router over real HTTP (httpx ASGI transport) against real PostgreSQL: every status
code, guard listings, audit rows, backfill knobs, gate results, OpenAPI security."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import URL, text
from sqlalchemy.ext.asyncio import AsyncEngine

from dualwrite.admin import ADMIN_MAX_BODY_BYTES, AdminContext, admin_router
from dualwrite.config import Settings
from dualwrite.phases import Phase
from dualwrite.runtime.watcher import PhaseWatcher
from dualwrite.state import audit_log, fleet, registry
from tests.conftest import make_settings

NAME = "clients_pii"
AUTH = {"Authorization": "Bearer admin-test-token"}
PHASE_URL = f"/admin/migrations/{NAME}/phase"


def app_with(ctx: AdminContext | None, *, via_state: bool = False) -> FastAPI:
    app = FastAPI()
    if via_state:
        app.include_router(admin_router())
        if ctx is not None:
            app.state.dualwrite_admin = ctx
    else:
        app.include_router(admin_router(ctx))
    return app


@pytest.fixture
async def client(engine: AsyncEngine, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = app_with(AdminContext(engine, settings, keyring_current="v1"), via_state=True)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as c:
        yield c


async def snapshot(engine: AsyncEngine) -> tuple[int, int]:
    """(state version, audit rows): neither may move on a refused request."""
    async with engine.connect() as conn:
        version = (await registry.get_migration(conn, NAME)).version
        rows = (await conn.execute(text("SELECT count(*) FROM dualwrite_audit"))).scalar_one()
    return version, int(rows)


def one_line(response: httpx.Response) -> str:
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail
    return detail


async def test_auth_is_required_and_never_open(
    engine: AsyncEngine, database_url: URL, client: httpx.AsyncClient
) -> None:
    r = await client.get("/admin/migrations")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert one_line(r) == "missing or wrong bearer token"
    r = await client.get("/admin/migrations", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    r = await client.post(PHASE_URL, content=b"{not json")  # auth before parsing
    assert r.status_code == 401

    unset = make_settings(database_url, admin_token=None)
    app = app_with(AdminContext(engine, unset, keyring_current="v1"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as c:
        for method, url in (("GET", "/admin/migrations"), ("POST", PHASE_URL)):
            r = await c.request(method, url, headers=AUTH, json={"target": "dual_write"})
            assert r.status_code == 503 and "ADMIN_TOKENS_FILE is not set" in one_line(r)
    app = app_with(None, via_state=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as c:
        assert (await c.get("/admin/migrations", headers=AUTH)).status_code == 503


async def test_list_and_detail(engine: AsyncEngine, client: httpx.AsyncClient) -> None:
    async with engine.begin() as conn:
        await fleet.heartbeat(
            conn, fleet.Heartbeat("api-1", NAME, Phase.PLAINTEXT, 1, frozenset({"v1"}), host="h")
        )
    r = await client.get("/admin/migrations", headers=AUTH)
    assert r.status_code == 200
    [m] = r.json()["migrations"]
    assert (m["name"], m["phase"], m["behaviour"]["reads_from"]) == (NAME, "plaintext", "plaintext")

    r = await client.get(f"/admin/migrations/{NAME}", headers=AUTH)
    assert r.status_code == 200
    d = r.json()
    assert d["coverage"]["percent"] == 100.0 and d["coverage"]["schema_expanded"] is True
    assert d["backfill"]["remaining"] == {"encrypt": 0, "decrypt": 0, "purge": 0}
    [inst] = d["fleet"]["instances"]
    assert (inst["instance_id"], inst["live"], inst["up_to_date"]) == ("api-1", True, True)
    assert d["moves"]["forward"]["target"] == "dual_write" and d["moves"]["backward"] is None
    assert d["last_verification"] is None and d["last_gate"] is None

    r = await client.get("/admin/migrations/nope", headers=AUTH)
    assert r.status_code == 404 and "unknown migration 'nope'" in one_line(r)


async def test_phase_change_and_audit(engine: AsyncEngine, client: httpx.AsyncClient) -> None:
    body = {"target": "dual_write", "reason": "start", "actor": "alice"}
    r = await client.post(PHASE_URL, headers=AUTH, json=body)
    assert r.status_code == 200, r.text
    assert (r.json()["phase"], r.json()["version"]) == ("dual_write", 2)
    r = await client.get("/admin/audit", headers=AUTH, params={"migration": NAME, "limit": 5})
    [row] = r.json()["records"]
    assert (row["actor"], row["outcome"], row["from_phase"], row["to_phase"], row["forced"]) == (
        "admin-api:default:alice",
        "applied",
        "plaintext",
        "dual_write",
        False,
    )
    r = await client.get("/admin/audit", headers=AUTH, params={"limit": 0})
    assert r.status_code == 422 and "limit" in one_line(r)


BAD_PHASE_REQUESTS: list[tuple[bytes, int, str]] = [
    (b'{"target": "dual_write"', 400, "malformed JSON body"),
    (b'{"target": "encrypted"}', 422, "invalid target: Input should be 'plaintext'"),
    (b'{"target": "backfill"}', 409, "cannot skip from plaintext to backfill"),
    (b'{"target": "backfill", "force": true, "reason": "x"}', 409, "cannot skip"),
    (b'{"target": "dual_write", "force": true}', 422, "needs a reason"),
    (b'{"target": "dual_write", "force": true, "reason": " "}', 422, "needs a reason"),
    (b'{"target": "dual_write", "force": 1, "reason": "x"}', 422, "invalid force"),
    (b'{"target": "dual_write", "expected_version": "1"}', 422, "invalid expected_version"),
    (b'{"target": "dual_write", "reason": "nul\\u0000"}', 422, "NUL"),
    (b'{"reason": "no target"}', 422, "invalid target: Field required"),
    (b'{"target": "dual_write", "bogus": 1}', 422, "invalid bogus"),
    (b'{"target": "dual_write", "expected_version": 9}', 409, "re-read and retry"),
    (b'{"target": "plaintext"}', 409, "already in plaintext"),
]


async def test_bad_phase_requests_change_nothing(
    engine: AsyncEngine, client: httpx.AsyncClient
) -> None:
    before = await snapshot(engine)
    headers = {**AUTH, "Content-Type": "application/json"}
    for body, status, message in BAD_PHASE_REQUESTS:
        r = await client.post(PHASE_URL, headers=headers, content=body)
        assert r.status_code == status, (body, r.text)
        assert message in one_line(r), body
    assert await snapshot(engine) == before


async def test_unknown_migration_and_oversized_body(
    engine: AsyncEngine, client: httpx.AsyncClient
) -> None:
    before = await snapshot(engine)
    r = await client.post(
        "/admin/migrations/nope/phase", headers=AUTH, json={"target": "dual_write"}
    )
    assert r.status_code == 404
    big = {"target": "dual_write", "reason": "x" * (ADMIN_MAX_BODY_BYTES + 1)}
    r = await client.post(PHASE_URL, headers=AUTH, json=big)
    assert r.status_code == 413 and "larger than" in one_line(r)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while streaming
        yield b'{"target": "dual_write", "reason": "'
        for _ in range(10):
            yield b"y" * 8192
        yield b'"}'

    r = await client.post(PHASE_URL, headers=AUTH, content=chunks())
    assert r.status_code == 413
    assert await snapshot(engine) == before


async def test_guard_refusal_lists_every_failure_and_is_audited(
    engine: AsyncEngine, client: httpx.AsyncClient
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE dualwrite_migrations SET phase = 'backfill', version = version + 1")
        )
    version, audits = await snapshot(engine)
    r = await client.post(PHASE_URL, headers=AUTH, json={"target": "read_switch"})
    assert r.status_code == 409
    failures = r.json()["failures"]
    assert [f["guard"] for f in failures] == ["verification_passed", "latency_gate_passed"]
    assert all(f["reason"] for f in failures)
    assert await snapshot(engine) == (version, audits + 1)
    r = await client.get("/admin/audit", headers=AUTH)
    assert r.json()["records"][0]["outcome"] == "refused"

    # forced with a reason goes through and is marked
    body = {"target": "read_switch", "force": True, "reason": "drill"}
    r = await client.post(PHASE_URL, headers=AUTH, json=body)
    assert r.status_code == 200
    r = await client.get("/admin/audit", headers=AUTH)
    assert r.json()["records"][0]["forced"] is True


async def test_concurrent_http_changes_one_winner(
    engine: AsyncEngine, client: httpx.AsyncClient
) -> None:
    body = {"target": "dual_write", "expected_version": 1}
    results = await asyncio.gather(
        *(client.post(PHASE_URL, headers=AUTH, json=body) for _ in range(2))
    )
    assert sorted(r.status_code for r in results) == [200, 409]
    assert (await snapshot(engine))[0] == 2


async def test_backfill_knobs(engine: AsyncEngine, client: httpx.AsyncClient) -> None:
    base = f"/admin/migrations/{NAME}/backfill"
    r = await client.post(f"{base}/pause", headers=AUTH)
    assert r.status_code == 200 and r.json()["backfill_control"]["paused"] is True
    r = await client.patch(base, headers=AUTH, json={"batch_size": 250, "sleep_ratio": 0.5})
    assert r.status_code == 200
    control = r.json()["backfill_control"]
    assert control == {"paused": True, "batch_size": 250, "sleep_ratio": 0.5}
    r = await client.post(f"{base}/resume", headers=AUTH, json={"reason": "load is low"})
    assert r.json()["backfill_control"]["paused"] is False
    async with engine.connect() as conn:
        state = await registry.get_migration(conn, NAME)
        rows = await audit_log.list_audit(conn, NAME)
    assert state.backfill_control["batch_size"] == 250
    assert [r.action for r in rows] == ["backfill_control"] * 3
    assert rows[0].reason == "paused=false (load is low)"

    before = await snapshot(engine)
    for bad, status in (
        ({"batch_size": 0}, 422),
        ({"max_rows_per_second": -1}, 422),
        ({"sleep_ratio": 1000}, 422),
        ({"workers": 3}, 422),
        ({}, 422),
        ({"reason": "only a reason"}, 422),
        ({"batch_size": None}, 422),
        ({"batch_size": True}, 422),
    ):
        r = await client.patch(base, headers=AUTH, json=bad)
        assert r.status_code == status, (bad, r.text)
        one_line(r)
    assert (
        await client.post("/admin/migrations/nope/backfill/pause", headers=AUTH)
    ).status_code == 404
    assert await snapshot(engine) == before


async def test_gate_results_feed_the_guards(engine: AsyncEngine, client: httpx.AsyncClient) -> None:
    url = f"/admin/migrations/{NAME}/gate"
    r = await client.post(
        url,
        headers=AUTH,
        json={"phase": "plaintext", "passed": True, "summary": {"p95_ms": {"read": 4}}},
    )
    assert r.status_code == 201 and r.json()["passed"] is True
    d = (await client.get(f"/admin/migrations/{NAME}", headers=AUTH)).json()
    assert d["last_gate"]["phase"] == "plaintext" and d["last_gate"]["passed"] is True
    r = await client.post(url, headers=AUTH, json={"phase": "nope", "passed": True})
    assert r.status_code == 422
    r = await client.post(url, headers=AUTH, json={"phase": "plaintext", "passed": 1})
    assert r.status_code == 422
    r = await client.post(url, headers=AUTH, json={"phase": "backfill"})
    assert r.status_code == 422
    r = await client.post(
        "/admin/migrations/nope/gate", headers=AUTH, json={"phase": "backfill", "passed": False}
    )
    assert r.status_code == 404


async def test_watcher_sees_admin_change_at_once(engine: AsyncEngine, settings: Settings) -> None:
    watcher = PhaseWatcher(engine, settings, key_versions=frozenset({"v1"}), listen=False)
    await watcher.start()
    try:
        app = app_with(AdminContext(engine, settings, "v1", watcher=watcher))
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://a"
        ) as c:
            r = await c.post(PHASE_URL, headers=AUTH, json={"target": "dual_write"})
        assert r.status_code == 200
        assert watcher.state(NAME).phase is Phase.DUAL_WRITE  # refreshed before answering
    finally:
        await watcher.stop()


async def test_openapi_documents_routes_and_bearer_scheme(client: httpx.AsyncClient) -> None:
    spec: dict[str, Any] = (await client.get("/openapi.json")).json()
    scheme = spec["components"]["securitySchemes"]["AdminToken"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    paths = spec["paths"]
    for path, method in (
        ("/admin/migrations", "get"),
        ("/admin/migrations/{name}", "get"),
        ("/admin/migrations/{name}/phase", "post"),
        ("/admin/migrations/{name}/backfill", "patch"),
        ("/admin/migrations/{name}/backfill/pause", "post"),
        ("/admin/migrations/{name}/backfill/resume", "post"),
        ("/admin/migrations/{name}/gate", "post"),
        ("/admin/audit", "get"),
    ):
        op = paths[path][method]
        assert op["security"] == [{"AdminToken": []}]
        codes = set(op["responses"])
        assert {"401", "500", "503"} <= codes
        assert ({"403", "413"} <= codes) is (method != "get")  # changes need an operator token
        for code, answer in op["responses"].items():
            if code >= "400":  # one error model for every 4xx/5xx, validation errors included
                ref = answer["content"]["application/json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/ErrorBody", (path, code)
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    phase_op = paths["/admin/migrations/{name}/phase"]["post"]
    assert "requestBody" in phase_op and "409" in phase_op["responses"]
    links = paths["/admin/migrations"]["get"]["responses"]["200"]["links"]
    assert links["setPhase"]["parameters"] == {"name": "$response.body#/migrations/0/name"}
