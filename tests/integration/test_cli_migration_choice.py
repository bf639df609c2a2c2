"""Operator commands pick the only registered migration, and say so in one line when there are
several; ``dualwrite gate --route`` drives the generic load shipped in the package."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from dualwrite.control import gate
from tests.harness.processes import environment, start_cli
from tests.integration.clinic_support import create_clinic_schema


async def cli(url: URL, *args: str) -> tuple[int, str, str]:
    proc = await start_cli(environment(url), *args)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_only_migration_is_the_default(database_url: URL) -> None:
    code, out, err = await cli(database_url, "phase", "set", "dual_write", "--reason", "start")
    assert code == 0, err
    assert "clients_pii: now in dual_write" in out


async def test_several_migrations_need_a_name(database_url: URL, engine: AsyncEngine) -> None:
    await create_clinic_schema(engine)  # registers patients_pii next to clients_pii
    for args in (
        ("phase", "set", "dual_write", "--reason", "x"),
        ("finalize", "--reason", "x"),
        ("verify", "--full"),
        ("backfill", "--mode", "encrypt", "--once"),
    ):
        code, _, err = await cli(database_url, *args)
        lines = [line for line in err.strip().splitlines() if not line.startswith("{")]  # logs
        assert code == 1 and len(lines) == 1, (args, err)
        assert "several migrations are registered (clients_pii, patients_pii)" in lines[0]
    code, _out, err = await cli(database_url, "phase", "set", "patients_pii", "dual_write",
                               "--reason", "named")  # fmt: skip
    assert code == 0, err


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_host() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


async def test_gate_routes_drive_the_shipped_load(http_host: str) -> None:
    assert gate.ROUTES_LOCUSTFILE.is_file()
    routes, limits = gate.parse_routes(["GET /patients/1=500", "GET /patients?limit=100=900"])
    stats = await asyncio.to_thread(
        gate.run_locust, http_host, locustfile=gate.ROUTES_LOCUSTFILE, users=2, duration="4s",
        env={"DUALWRITE_GATE_ROUTES": json.dumps(routes)},
    )  # fmt: skip
    verdict = gate.judge(stats, limits)
    assert verdict.passed, verdict.failures
    assert {e.name for e in stats} == set(limits)
