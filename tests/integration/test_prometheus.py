"""Observability against a real Prometheus: `dualwrite serve --workers 2` and a backfill worker
scraped on loopback every second, the shipped alert rules evaluated every second (their `for:`
cut to 1 s), while a migration runs and goes wrong in the ways the alerts exist for.

One scenario (module fixture) drives it: 300 legacy rows, backfill, a full verification, a failed
latency gate, read_switch, live traffic, then one tampered ciphertext, one ciphertext of another
value, one plaintext-only row read while the backfill is paused, an instance stuck on an old
version, a key that expires in 7 days and an API target that does not answer. The tests then
check what an operator relies on: totals across workers, every dashboard and rule expression
answered, the alerts firing for real, promtool happy with what the processes export.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from clients_service.schema import CLIENTS_PII
from dualwrite.crypto import BlindIndex, DataKey, FieldCipher, Keyring
from dualwrite.db import make_engine
from dualwrite.phases import Phase
from dualwrite.state import fleet, registry
from dualwrite.testing import DatabaseFactory
from dualwrite.verify import verify
from tests.conftest import TEST_BIDX_KEY, TEST_KEY_V1
from tests.harness.processes import environment
from tests.harness.prometheus import (
    DASHBOARDS,
    PrometheusApi,
    alert_rules,
    binary,
    eventually,
    free_port,
    promtool,
    running_prometheus,
    scrape_config,
    shortened_rules,
)
from tests.harness.service import Process, dualwrite_process, wait_healthy
from tests.integration.clients_support import flip_byte, seed_legacy_rows

MIGRATION = "clients_pii"
WS = uuid.UUID("00000000-0000-0000-0000-00000000aaaa")
ADMIN = {"Authorization": "Bearer admin-prom-token"}
ROUTE_ONE = "/workspaces/{workspace_id}/clients/{client_id}"
ROUTE_PAGE = "/workspaces/{workspace_id}/clients"
CLIENT_ROUTES = 'route=~"/workspaces/.*"'
LEFT = "SELECT count(*) FROM clients WHERE email_encrypted IS NULL"
REQUESTS = f"dualwrite_http_request_duration_seconds_count{{{CLIENT_ROUTES}}}"

EXPECTED_EMPTY = {
    "DualwriteSingleReadSlow": "the service answers single reads in milliseconds, under 100 ms "
    "(on a loaded machine a p95 over 100 ms may show: then it answers, which is fine too)",
    "DualwriteBulkReadSlow": "pages of 100 take milliseconds, far under 1 s",
    "DualwriteBackfillStalled": "needs 10-minute windows without progress; the worker here "
    "finishes its rows in about a second",
}
"""Alert expressions that may return nothing here, and why (each one fires on its synthetic
series and stays quiet on a healthy one in tests/prometheus/alerts_test.yml)."""


@dataclass
class Live:
    prom: PrometheusApi
    api: httpx.AsyncClient
    engine: AsyncEngine
    serve: Process
    backfill: Process
    metrics_dir: Path
    api_target: str
    sent: Counter[tuple[str, str]] = field(default_factory=Counter)
    tampered: str = ""
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def call(self, method: str, route: str, path: str, **kw: Any) -> httpx.Response:
        r = await self.api.request(method, path, **kw)
        self.sent[(method, route)] += 1
        return r

    async def prometheus_counts(self) -> Counter[tuple[str, str]]:
        rows = await self.prom.query(f"sum by (method, route) ({REQUESTS})")
        return Counter(
            {(r["metric"]["method"], r["metric"]["route"]): int(float(r["value"][1])) for r in rows}
        )

    async def wait_scraped(self) -> None:
        """Until Prometheus has scraped every request sent so far."""
        await eventually(
            self.prometheus_counts, lambda c: c == self.sent, timeout=30, what="request counts"
        )


def keys_file(folder: Path) -> Path:
    """The test key v1, expiring 7 days from now (DualwriteKeyExpiringSoon)."""
    path = folder / "keys.json"
    expires = (datetime.now(UTC) + timedelta(days=7)).isoformat()
    doc = {"current": "v1", "keys": [{"version": "v1", "key": TEST_KEY_V1, "expires_at": expires}]}
    path.write_text(json.dumps(doc))
    return path


async def move(engine: AsyncEngine, *targets: Phase) -> int:
    async with engine.begin() as conn:
        state = await registry.get_migration(conn, MIGRATION)
        for target in targets:
            state = await registry.compare_and_swap_phase(conn, MIGRATION, state.version, target)
        await registry.notify_phase(conn, state)
    return state.version


async def api_instances(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT instance_id, pid, observed_version FROM dualwrite_instances WHERE "
                "migration = :m AND role = 'api' AND instance_id LIKE 'api-%' AND "
                "last_seen > clock_timestamp() - interval '2 seconds' ORDER BY instance_id"
            ),
            {"m": MIGRATION},
        )
        return list(rows)


async def rows_left(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text(LEFT))).scalar_one())


async def stuck_instance(engine: AsyncEngine, version: int) -> None:
    """An instance whose heartbeat runs but whose phase never refreshes (LISTEN and polling
    broken): it keeps reporting ``version`` (DualwriteInstancesLagging)."""
    beat = fleet.Heartbeat(
        "stuck-instance", MIGRATION, Phase.BACKFILL, version, frozenset({"v1"}),
        host="elsewhere", pid=1, poll_interval_seconds=0.5,
    )  # fmt: skip
    while True:
        async with engine.begin() as conn:
            await fleet.heartbeat(conn, beat)
        await asyncio.sleep(0.3)


async def scenario(live: Live) -> None:
    engine, call = live.engine, live.call
    async with engine.connect() as conn:
        ids = [str(r[0]) for r in await conn.execute(text("SELECT id FROM clients ORDER BY id"))]
    await eventually(lambda: rows_left(engine), lambda n: n == 0, timeout=60, what="backfill")
    keyring = Keyring([DataKey("v1", base64.b64decode(TEST_KEY_V1))])
    cipher = FieldCipher(keyring)
    report = await verify(engine, CLIENTS_PII, cipher, BlindIndex(base64.b64decode(TEST_BIDX_KEY)))
    assert report.checked == len(ids)
    r = await live.api.post(
        f"/admin/migrations/{MIGRATION}/gate", headers=ADMIN,
        json={"phase": "backfill", "passed": False, "summary": {"failures": ["p95 over"]}},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    version = await move(engine, Phase.READ_SWITCH)
    await eventually(
        lambda: api_instances(engine),
        lambda rows: len(rows) == 2 and all(row.observed_version == version for row in rows),
        timeout=30,
        what="both workers observe read_switch",
    )
    live.tasks.append(asyncio.create_task(stuck_instance(engine, version - 1)))
    base = f"/workspaces/{WS}/clients"
    for _ in range(5):
        assert (await call("GET", ROUTE_PAGE, base, params={"limit": 100})).status_code == 200
    for chunk in range(0, 30, 10):  # ten at a time: both workers accept connections
        reads = [call("GET", ROUTE_ONE, f"{base}/{i}") for i in ids[chunk : chunk + 10]]
        assert {r.status_code for r in await asyncio.gather(*reads)} == {200}
    for i in range(5):
        body = {"first_name": f"New{i}", "last_name": "Client", "email": f"new{i}@example.org"}
        assert (await call("POST", ROUTE_PAGE, base, json=body)).status_code == 201
        patch = {"phone": f"+1 555 020 {i:04d}"}
        r = await call("PATCH", ROUTE_ONE, f"{base}/{ids[40 + i]}", json=patch)
        assert r.status_code == 200, r.text
    # a ciphertext altered in the table: the read answers 500, a decrypt failure; the counter
    # is exported at 0 before it, so that Prometheus sees the very first failure as an increase
    failures = 'sum(dualwrite_crypto_failures_total{operation="decrypt", field="email"})'
    await eventually(  # scraped at least once since the workers started
        lambda: live.prom.value(failures), lambda v: v == 0, timeout=30, what="failures at 0"
    )
    live.tampered = ids[100]
    await flip_byte(engine, ids[100], "email_encrypted", 20)
    assert (await call("GET", ROUTE_ONE, f"{base}/{ids[100]}")).status_code == 500
    # the status="500" series is born with that request; errors go on once it is scraped
    errors = f'sum(dualwrite_http_request_duration_seconds_count{{{CLIENT_ROUTES}, status="500"}})'
    await eventually(lambda: live.prom.value(errors), lambda v: v == 1, timeout=30, what="500s")
    for _ in range(2):
        assert (await call("GET", ROUTE_ONE, f"{base}/{ids[100]}")).status_code == 500
    # a valid ciphertext of another value: the shadow read (sample rate 1) disagrees
    other = cipher.encrypt("+1 555 999 9999", table="clients", column="phone", row_key=ids[101])
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE clients SET phone_encrypted = :v WHERE id = :i"),
            {"v": other, "i": uuid.UUID(ids[101])},
        )
    assert (await call("GET", ROUTE_ONE, f"{base}/{ids[101]}")).status_code == 200
    # a legacy writer's plaintext-only row, read while the backfill is paused: a fallback
    r = await live.api.post(f"/admin/migrations/{MIGRATION}/backfill/pause", headers=ADMIN)
    assert r.status_code == 200, r.text
    legacy = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO clients (id, workspace_id, first_name, last_name, email) "
                "VALUES (:i, :ws, 'Legacy', 'Writer', 'legacy@example.org')"
            ),
            {"i": legacy, "ws": WS},
        )
    paused = f'dualwrite_backfill_throttled{{migration="{MIGRATION}", reason="paused"}}'
    await eventually(lambda: live.prom.value(paused), lambda v: v == 1, timeout=30, what="paused")
    assert (await call("GET", ROUTE_ONE, f"{base}/{legacy}")).status_code == 200
    r = await live.api.post(f"/admin/migrations/{MIGRATION}/backfill/resume", headers=ADMIN)
    assert r.status_code == 200, r.text
    await eventually(lambda: rows_left(engine), lambda n: n == 0, timeout=30, what="re-encrypted")


@pytest.fixture(scope="module")
async def live(
    db_factory: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Live]:
    binary("prometheus")
    folder = tmp_path_factory.mktemp("prometheus-live")
    url = await db_factory.create("0003")
    engine = make_engine(url, pool_size=3)
    await seed_legacy_rows(engine, 300, WS)
    await move(engine, Phase.DUAL_WRITE, Phase.BACKFILL)
    env = environment(url, ENCRYPTION_KEYS_FILE=str(keys_file(folder)), POLL_INTERVAL_SECONDS="0.5")
    env.pop("ENCRYPTION_KEYS")
    env.pop("ENCRYPTION_CURRENT_KEY")
    metrics_dir = folder / "api-metrics"
    api_env = {
        **env, "API_TOKEN": "api-prom-token", "ADMIN_TOKEN": "admin-prom-token",
        "SHADOW_READ_SAMPLE_RATE": "1", "INSTANCE_ID": "api",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }  # fmt: skip
    api_port, backfill_port, nobody = free_port(), free_port(), free_port()
    api_target = f"127.0.0.1:{api_port}"
    config = scrape_config(
        {
            "dualwrite-api": [api_target, f"127.0.0.1:{nobody}"],
            "dualwrite-backfill": [f"127.0.0.1:{backfill_port}"],
        }
    )
    async with contextlib.AsyncExitStack() as stack:
        serve = await stack.enter_async_context(
            dualwrite_process(
                api_env,
                folder,
                "serve",
                "serve",
                "--port",
                str(api_port),
                "--workers",
                "2",
                "--log-level",
                "warning",
            )
        )
        backfill = await stack.enter_async_context(
            dualwrite_process(
                env,
                folder,
                "backfill",
                "backfill",
                "--mode",
                "encrypt",
                "--json",
                "--batch-size",
                "50",
                "--max-rows-per-second",
                "400",
                "--metrics-port",
                str(backfill_port),
            )
        )
        prom = await stack.enter_async_context(running_prometheus(config, shortened_rules("1s")))
        base = f"http://{api_target}"
        await wait_healthy(base, serve)
        api = await stack.enter_async_context(
            httpx.AsyncClient(
                base_url=base,
                timeout=10,
                headers={"Authorization": "Bearer api-prom-token"},
                limits=httpx.Limits(max_keepalive_connections=0),  # a new connection each time
            )
        )
        live = Live(prom, api, engine, serve, backfill, metrics_dir, api_target)
        try:
            await scenario(live)
            await live.wait_scraped()
            yield live
        finally:
            for task in live.tasks:
                task.cancel()
            await engine.dispose()
    await db_factory.drop(url)


# --- what it must show -------------------------------------------------------------------------


async def test_the_service_and_a_backfill_worker_are_scraped_on_loopback(live: Live) -> None:
    targets = {(t["labels"]["job"], t["labels"]["instance"]): t for t in await live.prom.targets()}
    up = {key: t["health"] for key, t in targets.items()}
    assert up[("dualwrite-api", live.api_target)] == "up"
    backfill = [t for (job, _), t in targets.items() if job == "dualwrite-backfill"]
    assert [t["health"] for t in backfill] == ["up"]
    rows = await live.prom.value(f'sum(dualwrite_backfill_rows_total{{migration="{MIGRATION}"}})')
    assert rows is not None and rows >= 300  # the backfill worker's own counter, scraped


async def test_requests_summed_by_prometheus_equal_requests_sent_with_two_workers(
    live: Live,
) -> None:
    assert await live.prometheus_counts() == live.sent
    total = sum(live.sent.values())
    # each worker served a share (so neither worker's own numbers are the total) ...
    per_worker = []
    for pid in live.serve.children():
        files = [str(p) for p in live.metrics_dir.glob(f"histogram_{pid}.db")]
        served = sum(
            s.value
            for metric in MultiProcessCollector.merge(files)
            for s in metric.samples
            if s.name.endswith("_count") and s.labels.get("route", "").startswith("/workspaces")
        )
        per_worker.append(served)
    assert len(per_worker) == 2 and sum(per_worker) == total, per_worker
    assert all(0 < n < total for n in per_worker), per_worker
    # ... and each worker heartbeats as an instance of its own
    instances = await api_instances(live.engine)
    assert [i.instance_id for i in instances] == ["api-0", "api-1"]
    assert sorted(i.pid for i in instances) == live.serve.children()
    live_api = await live.prom.value(f'sum(dualwrite_instances{{migration="{MIGRATION}"}})')
    assert live_api == 3  # the two workers and the stuck instance


def dashboard_queries() -> list[tuple[str, str, str]]:
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"].replace("$migration", MIGRATION)
                out.append((path.name, panel["title"], expr))
    return out


async def test_every_dashboard_panel_expression_returns_data(live: Live) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 30
    empty = [
        f"{name} / {title}: {expr}"
        for name, title, expr in queries
        if not await live.prom.query(expr)
    ]
    assert not empty, "\n".join(empty)


async def test_every_rule_expression_is_evaluated_and_returns_data(live: Live) -> None:
    rules = await live.prom.rules()
    assert {r["name"] for r in rules} == {r["alert"] for r in alert_rules()}
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad
    empty = [
        rule["alert"]
        for rule in alert_rules()
        if rule["alert"] not in EXPECTED_EMPTY and not await live.prom.query(rule["expr"])
    ]
    assert not empty, empty


async def test_alerts_fire_for_real_starting_with_decrypt_failures(live: Live) -> None:
    firing = await eventually(
        lambda: live.prom.firing("DualwriteDecryptFailures", migration=MIGRATION, field="email"),
        bool,
        timeout=30,
        what="DualwriteDecryptFailures firing",
    )
    assert firing[0]["labels"]["severity"] == "critical"
    assert "do not decrypt" in firing[0]["annotations"]["summary"]
    assert live.tampered not in json.dumps(firing)  # no row id, no value in an alert
    expected = {
        "DualwriteApiDown": {"job": "dualwrite-api"},
        "DualwriteRequestErrors": {"route": ROUTE_ONE},
        "DualwriteShadowReadMismatches": {"migration": MIGRATION, "field": "phone"},
        "DualwriteReadFallbacks": {"migration": MIGRATION, "field": "email"},
        "DualwriteInstancesLagging": {"migration": MIGRATION},
        "DualwriteKeyExpiringSoon": {"version": "v1"},
        "DualwriteLatencyGateFailing": {"migration": MIGRATION},
    }
    for name, labels in expected.items():
        await eventually(
            lambda n=name, lb=labels: live.prom.firing(n, **lb), bool, timeout=30, what=name
        )


async def test_promtool_check_metrics_accepts_the_live_scrapes(live: Live) -> None:
    targets = [t["scrapeUrl"] for t in await live.prom.targets() if t["health"] == "up"]
    assert len(targets) == 2
    async with httpx.AsyncClient(timeout=10) as client:
        for url in targets:
            body = (await client.get(url)).text
            assert "dualwrite_" in body
            for secret in (TEST_KEY_V1, TEST_BIDX_KEY, "api-prom-token", "admin-prom-token"):
                assert secret not in body
            assert not re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-", body), url  # no row ids
            result = promtool("check", "metrics", stdin=body)
            assert result.returncode == 0, (url, result.stdout, result.stderr)


async def test_a_killed_worker_is_restarted_marked_dead_and_its_counts_kept(live: Live) -> None:
    before = live.serve.children()
    victim = before[0]
    os.kill(victim, signal.SIGKILL)
    after = await eventually(
        lambda: asyncio.sleep(0, live.serve.children()),
        lambda pids: len(pids) == 2 and victim not in pids,
        timeout=30,
        what="worker restarted",
    )
    assert not list(live.metrics_dir.glob(f"gauge_live*_{victim}.db"))  # marked dead
    assert list(live.metrics_dir.glob(f"histogram_{victim}.db"))  # its counts stay
    await eventually(
        lambda: api_instances(live.engine), lambda rows: sorted(r.pid for r in rows) == after,
        timeout=30, what="the new worker heartbeats under its predecessor's instance id",
    )  # fmt: skip
    for row_id in range(10):
        r = await live.call("GET", ROUTE_ONE, f"/workspaces/{WS}/clients/{uuid.UUID(int=row_id)}")
        assert r.status_code == 404
    await live.wait_scraped()
