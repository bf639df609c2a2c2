"""Scoped admin tokens over real HTTP against real PostgreSQL: read-only tokens read and are
refused every change, operator tokens change, several are valid at once, a token removed from
ADMIN_TOKENS_FILE stops working without a restart, the audit row names the token (never its
value), a malformed configuration fails at start in one line without the secret, and the
optional metrics token."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import URL, text
from sqlalchemy.ext.asyncio import AsyncEngine

from dualwrite.admin import AdminContext, TokenSource, admin_router
from dualwrite.config import Settings
from dualwrite.errors import ConfigError
from dualwrite.state import audit_log
from tests.conftest import ROOT, make_settings
from tests.integration.clients_support import running_app

NAME = "clients_pii"
READER = "reader-token-000000000001"
OPERATOR = "operator-token-0000000001"
ROTATED = "operator-token-0000000002"

#: every route that changes something, with a body it would otherwise accept
CHANGES: list[tuple[str, str, dict[str, object] | None]] = [
    ("POST", f"/admin/migrations/{NAME}/phase", {"target": "dual_write", "reason": "go"}),
    ("POST", f"/admin/migrations/{NAME}/backfill/pause", None),
    ("POST", f"/admin/migrations/{NAME}/backfill/resume", {"reason": "go"}),
    ("PATCH", f"/admin/migrations/{NAME}/backfill", {"batch_size": 10}),
    ("POST", f"/admin/migrations/{NAME}/gate", {"phase": "plaintext", "passed": True}),
]
READS = ["/admin/migrations", f"/admin/migrations/{NAME}", "/admin/audit"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def counts(engine: AsyncEngine) -> tuple[int, int, int]:
    """(state version, audit rows, gate rows): a refused change moves none of them."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT (SELECT version FROM dualwrite_migrations WHERE name = :n), "
                    "(SELECT count(*) FROM dualwrite_audit), "
                    "(SELECT count(*) FROM dualwrite_gate_results)"
                ),
                {"n": NAME},
            )
        ).one()
    return int(row[0]), int(row[1]), int(row[2])


def client_for(ctx: AdminContext) -> httpx.AsyncClient:
    app = FastAPI()
    app.include_router(admin_router(ctx))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin")


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "admin-tokens"
    path.write_text(f"# name:scope:token\nviewer:read:{READER}\nops:operator:{OPERATOR}\n")
    return path


@pytest.fixture
async def http(
    engine: AsyncEngine, database_url: URL, token_file: Path
) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(database_url, admin_token=None, admin_tokens_file=token_file)
    ctx = AdminContext(engine, settings, keyring_current="v1", tokens=TokenSource(settings))
    async with client_for(ctx) as c:
        yield c


async def test_read_only_token_reads_and_is_refused_every_change(
    engine: AsyncEngine, http: httpx.AsyncClient
) -> None:
    for url in READS:
        r = await http.get(url, headers=bearer(READER))
        assert r.status_code == 200, (url, r.text)
    before = await counts(engine)
    for method, url, body in CHANGES:
        r = await http.request(method, url, headers=bearer(READER), json=body)
        assert r.status_code == 403, (method, url, r.text)
        assert r.json() == {
            "detail": f"token 'viewer' is read-only: {method} needs an operator token"
        }
    # refused before the body is read: an oversized or malformed body changes nothing either
    r = await http.post(CHANGES[0][1], headers=bearer(READER), content=b"{not json")
    assert r.status_code == 403
    assert await counts(engine) == before
    for method, url, body in CHANGES:  # the same requests with the operator token go through
        r = await http.request(method, url, headers=bearer(OPERATOR), json=body)
        assert r.status_code in (200, 201), (method, url, r.text)


async def test_audit_row_names_the_token_never_its_value(
    engine: AsyncEngine, http: httpx.AsyncClient
) -> None:
    r = await http.post(
        CHANGES[0][1], headers=bearer(OPERATOR), json={"target": "dual_write", "actor": "alice"}
    )
    assert r.status_code == 200, r.text
    r = await http.post(CHANGES[1][1], headers=bearer(OPERATOR))
    assert r.status_code == 200
    async with engine.connect() as conn:
        rows = await audit_log.list_audit(conn, NAME)
    assert [row.actor for row in rows] == ["admin-api:ops", "admin-api:ops:alice"]
    async with engine.connect() as conn:
        dump = str((await conn.execute(text("SELECT * FROM dualwrite_audit"))).all())
    assert OPERATOR not in dump and READER not in dump
    r = await http.get("/admin/audit", headers=bearer(READER))
    assert [rec["actor"] for rec in r.json()["records"]] == [row.actor for row in rows]


async def test_tokens_rotate_and_revoke_through_the_file_without_restart(
    engine: AsyncEngine, http: httpx.AsyncClient, token_file: Path
) -> None:
    # add a second operator token: both are valid at once
    token_file.write_text(
        f"viewer:read:{READER}\nops:operator:{OPERATOR}\nops-2:operator:{ROTATED}\n"
    )
    for token in (OPERATOR, ROTATED):
        assert (await http.get("/admin/migrations", headers=bearer(token))).status_code == 200
    # revoke the old one: 401 at once, the new one keeps working
    token_file.write_text(f"viewer:read:{READER}\nops-2:operator:{ROTATED}\n")
    before = await counts(engine)
    r = await http.post(CHANGES[1][1], headers=bearer(OPERATOR))
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json() == {"detail": "missing or wrong bearer token"}
    assert (await http.get("/admin/migrations", headers=bearer(OPERATOR))).status_code == 401
    assert await counts(engine) == before
    r = await http.post(CHANGES[1][1], headers=bearer(ROTATED))
    assert r.status_code == 200
    # a file broken mid-flight refuses everything (a typo must not keep a revoked token alive)
    token_file.write_text(f"viewer:read:{READER}\nops-2:operator\n")
    r = await http.get("/admin/migrations", headers=bearer(ROTATED))
    assert r.status_code == 503
    assert r.json()["detail"] == (
        "admin API disabled: ADMIN_TOKENS_FILE entry 2: must look like name:scope:token "
        "(value not shown)"
    )
    token_file.write_text(f"ops-2:operator:{ROTATED}\n")
    assert (await http.get("/admin/migrations", headers=bearer(ROTATED))).status_code == 200


async def test_env_tokens_and_the_single_admin_token(
    engine: AsyncEngine, database_url: URL
) -> None:
    settings = make_settings(
        database_url,
        admin_token="legacy-token-000000000000",
        admin_tokens=f"ci:read:{READER}, deployer:operator:{OPERATOR}",
    )
    ctx = AdminContext(engine, settings, keyring_current="v1")
    async with client_for(ctx) as http:
        for token, status in (("legacy-token-000000000000", 200), (OPERATOR, 200), (READER, 403)):
            r = await http.post(CHANGES[1][1], headers=bearer(token))
            assert r.status_code == status, (token, r.text)
        assert (await http.get("/admin/audit", headers=bearer(READER))).status_code == 200
        assert (await http.get("/admin/audit", headers=bearer("nope" * 5))).status_code == 401
    async with engine.connect() as conn:
        actors = [row.actor for row in await audit_log.list_audit(conn, NAME)]
    assert actors == ["admin-api:deployer", "admin-api:default"]


SECRET = "s3cret-value-must-not-leak"
MALFORMED: list[tuple[dict[str, object], str]] = [
    ({"admin_tokens": f"ops:{SECRET}"}, "ADMIN_TOKENS entry 1: must look like"),
    ({"admin_tokens": SECRET}, "ADMIN_TOKENS entry 1: must look like"),
    ({"admin_tokens": f"ops:root:{SECRET}"}, "ADMIN_TOKENS entry 1 ('ops'): scope must be"),
    ({"admin_tokens": "ops:operator:short"}, "ADMIN_TOKENS entry 1 ('ops'): a token must be"),
    ({"admin_tokens": f"bad name:read:{SECRET}"}, "ADMIN_TOKENS entry 1: the name must be"),
    ({"admin_tokens": f"a:read:{SECRET},a:operator:{SECRET}x"}, "name 'a' is already used"),
    ({"admin_tokens": f"a:read:{SECRET},b:operator:{SECRET}"}, "token 'b' has the same value"),
    ({"admin_token": "short"}, "ADMIN_TOKEN value: a token must be"),
    ({"admin_tokens": f"default:read:{SECRET}", "admin_token": SECRET + "1"}, "'default'"),
    ({"admin_tokens_file": "/nonexistent/tokens"}, "ADMIN_TOKENS_FILE /nonexistent/tokens"),
]


@pytest.mark.parametrize(("overrides", "message"), MALFORMED)
def test_malformed_token_configuration_fails_in_one_line(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        TokenSource(Settings(**{"admin_token": None, **overrides}))  # type: ignore[arg-type]
    text_ = str(caught.value)
    assert message in text_ and "\n" not in text_
    assert SECRET not in text_ and "short" not in text_


def test_serve_refuses_a_malformed_token_setting_at_start() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADMIN_TOKEN", "DATABASE"))}
    env["ADMIN_TOKENS"] = f"ops:operator:{SECRET}\nno-scope-{SECRET}"
    proc = subprocess.run(
        [sys.executable, "-m", "dualwrite.cli", "serve", "--port", "1"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert lines == [
        "error: ADMIN_TOKENS entry 2: must look like name:scope:token (value not shown)"
    ], proc.stderr
    assert SECRET not in proc.stderr + proc.stdout and "Traceback" not in proc.stderr


async def test_metrics_are_open_unless_a_metrics_token_is_set(database_url: URL) -> None:
    async with running_app(make_settings(database_url), token=None) as (_, http):
        assert (await http.get("/metrics")).status_code == 200  # as Prometheus expects
    guarded = make_settings(database_url, metrics_token="metrics-token-00000001")
    async with running_app(guarded, token=None) as (_, http):
        r = await http.get("/metrics")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert (
            await http.get("/metrics", headers=bearer("wrong-token-0000000"))
        ).status_code == 401
        r = await http.get("/metrics", headers=bearer("metrics-token-00000001"))
        assert r.status_code == 200 and "dualwrite_phase" in r.text
