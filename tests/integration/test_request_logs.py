"""What the service logs while it serves, read back as JSON lines: one ``http_request`` event
per request (request id accepted or made, echoed in ``X-Request-ID``, route template, status,
duration), and the events of phase changes, guard refusals, gate results, verification runs,
backfill runs (start, pause, resume, finish) and key loads -- never a value, key or token."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from clients_service.schema import CLIENTS_PII
from dualwrite.backfill import Backfiller, BackfillOptions
from dualwrite.control.knobs import set_backfill_control
from dualwrite.crypto import BlindIndex
from dualwrite.logs import reset_logging, setup_logging
from dualwrite.phases import BackfillMode, Phase
from dualwrite.verify import verify
from tests.conftest import TEST_BIDX_KEY, TEST_KEY_V1, make_settings
from tests.integration.backfill_helpers import cipher_of, move_to
from tests.integration.clients_support import new_client, running_app, set_phase

ADMIN = {"Authorization": "Bearer admin-test-token"}


@pytest.fixture
def logged() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    setup_logging(fmt="json", stream=stream)
    yield stream
    reset_logging()


def events(stream: io.StringIO, name: str | None = None) -> list[dict[str, Any]]:
    found = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [e for e in found if name is None or e["event"] == name]


async def test_each_request_is_one_event_with_its_request_id(
    engine: AsyncEngine, database_url: URL, logged: io.StringIO
) -> None:
    async with running_app(make_settings(database_url), token=None) as (_, http):
        [keys] = events(logged, "keys_loaded")
        assert (keys["versions"], keys["current"], keys["blind_index_key"]) == (["v1"], "v1", True)
        ws = uuid.uuid4()
        r = await http.post(
            f"/workspaces/{ws}/clients", json=new_client(1), headers={"X-Request-ID": "req-42"}
        )
        assert r.status_code == 201 and r.headers["x-request-id"] == "req-42"
        client_id = r.json()["id"]
        r = await http.get(f"/workspaces/{ws}/clients/search", params={"email": "ada1@example.org"})
        made = r.headers["x-request-id"]
        r = await http.get(
            f"/workspaces/{ws}/clients/{client_id}",
            headers={"X-Request-ID": "bad id\n" + "x" * 200},
        )
        replaced = r.headers["x-request-id"]
        assert len(replaced) == 32 and "bad" not in replaced
        r = await http.put(f"/workspaces/{ws}/clients/{client_id}")
        assert r.status_code == 405 and r.headers["allow"] == "GET, PATCH, DELETE"
    requests = events(logged, "http_request")
    assert [(e["method"], e["route"], e["status"], e["request_id"]) for e in requests] == [
        ("POST", "/workspaces/{workspace_id}/clients", 201, "req-42"),
        ("GET", "/workspaces/{workspace_id}/clients/search", 200, made),
        ("GET", "/workspaces/{workspace_id}/clients/{client_id}", 200, replaced),
        ("PUT", "/workspaces/{workspace_id}/clients/{client_id}", 405, requests[3]["request_id"]),
    ]
    assert all(isinstance(e["duration_ms"], float) and e["duration_ms"] >= 0 for e in requests)
    text = logged.getvalue()
    for value in (*new_client(1).values(), client_id, str(ws)):  # no value, id or query string
        assert value is None or str(value) not in text


async def test_admin_changes_and_refusals_are_events_of_their_request(
    engine: AsyncEngine, database_url: URL, logged: io.StringIO
) -> None:
    async with running_app(make_settings(database_url), token=None) as (app, http):
        base = "/admin/migrations/clients_pii"
        r = await http.post(f"{base}/phase", headers={**ADMIN, "X-Request-ID": "move-1"},
                            json={"target": "dual_write", "reason": "go"})  # fmt: skip
        assert r.status_code == 200
        await set_phase(engine, app, Phase.BACKFILL)  # read_switch then needs a verification
        r = await http.post(f"{base}/phase", headers={**ADMIN, "X-Request-ID": "move-2"},
                            json={"target": "read_switch"})  # fmt: skip
        assert r.status_code == 409 and r.json()["failures"]
        r = await http.post(
            f"{base}/gate", headers=ADMIN, json={"phase": "dual_write", "passed": False}
        )
        assert r.status_code == 201
        r = await http.post(f"{base}/backfill/pause", headers={"Authorization": "Bearer wrong-0"})
        assert r.status_code == 401
    [changed] = events(logged, "phase_changed")
    assert (changed["from_phase"], changed["to_phase"], changed["to_version"]) == (
        "plaintext", "dual_write", 2,
    )  # fmt: skip
    assert changed["actor"] == "admin-api:default" and changed["request_id"] == "move-1"
    [refused] = events(logged, "phase_refused")
    assert refused["request_id"] == "move-2" and refused["level"] == "warning"
    assert refused["to_phase"] == "read_switch"
    assert {"verification_passed", "latency_gate_passed"} <= set(refused["guards"])
    [gate] = events(logged, "gate_recorded")
    assert (gate["phase"], gate["passed"], gate["level"]) == ("dual_write", False, "warning")
    [denied] = events(logged, "admin_token_refused")
    assert (denied["status"], denied["route"]) == (401, "/admin/migrations/{name}/backfill/pause")
    assert "admin-test-token" not in logged.getvalue() and "wrong-0" not in logged.getvalue()


async def test_backfill_and_verification_events(
    engine: AsyncEngine, database_url: URL, logged: io.StringIO
) -> None:
    settings = make_settings(database_url)
    async with running_app(settings, token=None) as (app, http):
        await set_phase(engine, app, Phase.PLAINTEXT)
        ws = uuid.uuid4()
        for i in range(30):
            assert (
                await http.post(f"/workspaces/{ws}/clients", json=new_client(i))
            ).status_code == 201
    await move_to(engine, Phase.DUAL_WRITE, Phase.BACKFILL)
    await set_backfill_control(engine, "clients_pii", {"paused": True}, actor="test")
    worker = Backfiller(
        engine, "clients_pii", cipher_of(settings), BlindIndex.from_settings(settings),
        BackfillOptions(mode=BackfillMode.ENCRYPT, batch_size=10, once=True, poll_seconds=0.05),
    )  # fmt: skip
    run = asyncio.create_task(worker.run())
    for _ in range(200):
        if events(logged, "backfill_paused"):
            break
        await asyncio.sleep(0.05)
    await set_backfill_control(engine, "clients_pii", {"paused": False}, actor="test")
    report = await asyncio.wait_for(run, 60)
    assert report.rows_done == 30
    result = await verify(
        engine, CLIENTS_PII, cipher_of(settings), BlindIndex.from_settings(settings), full=True
    )
    assert result.ok
    names = [e["event"] for e in events(logged) if e["event"].startswith(("backfill_", "verif"))]
    assert names == [
        "backfill_started", "backfill_paused", "backfill_resumed", "backfill_finished",
        "verification_recorded",
    ]  # fmt: skip
    [finished] = events(logged, "backfill_finished")
    assert (finished["rows_done"], finished["stopped"], finished["mode"]) == (
        30,
        "finished",
        "encrypt",
    )
    [verified] = events(logged, "verification_recorded")
    assert (verified["checked"], verified["mismatched"], verified["full"]) == (30, 0, True)
    text = logged.getvalue()
    assert TEST_KEY_V1 not in text and TEST_BIDX_KEY not in text
    assert "ada1@example.org" not in text and "Lovelace" not in text
