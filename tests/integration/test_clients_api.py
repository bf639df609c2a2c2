"""The clients API over HTTP on real PostgreSQL: CRUD, workspace isolation, token, bad input,
tampered ciphertext, refusal without the current key, metrics."""

from __future__ import annotations

import uuid

from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from dualwrite.metrics import Metrics
from dualwrite.phases import Phase
from tests.conftest import make_settings
from tests.integration.clients_support import (
    TOKEN,
    flip_byte,
    new_client,
    raw_rows,
    running_app,
    set_phase,
)


async def count_rows(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM clients"))).scalar_one())


async def test_crud_isolation_and_pages(engine: AsyncEngine, database_url: URL) -> None:
    async with running_app(make_settings(database_url, api_token=TOKEN)) as (app, http):
        await set_phase(engine, app, Phase.DUAL_WRITE)
        ws, other = uuid.uuid4(), uuid.uuid4()
        created = []
        for i in range(5):
            r = await http.post(f"/workspaces/{ws}/clients", json=new_client(i))
            assert r.status_code == 201, r.text
            created.append(r.json())
        assert (
            await http.post(f"/workspaces/{other}/clients", json=new_client(9))
        ).status_code == 201
        one = created[0]
        assert one["email"] == "ada0@example.org" and one["is_active"] is True
        assert uuid.UUID(one["id"]) and one["workspace_id"] == str(ws)
        got = await http.get(f"/workspaces/{ws}/clients/{one['id']}")
        assert got.status_code == 200 and got.json() == one
        # another workspace never sees it
        assert (await http.get(f"/workspaces/{other}/clients/{one['id']}")).status_code == 404
        r = await http.patch(f"/workspaces/{other}/clients/{one['id']}", json={"phone": None})
        assert r.status_code == 404
        assert (await http.delete(f"/workspaces/{other}/clients/{one['id']}")).status_code == 404
        # keyset pages of 2
        seen, after = [], None
        while True:
            params = {"limit": 2, **({"after": after} if after else {})}
            page = (await http.get(f"/workspaces/{ws}/clients", params=params)).json()
            seen += [c["id"] for c in page["items"]]
            after = page["next_after"]
            if after is None:
                break
        assert seen == sorted(c["id"] for c in created)
        # update: only given fields change; null clears an optional field
        r = await http.patch(
            f"/workspaces/{ws}/clients/{one['id']}",
            json={"phone": "+44 20 7946 0958", "address": None},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["phone"] == "+44 20 7946 0958" and body["address"] is None
        assert body["first_name"] == one["first_name"]
        # search
        found = await http.get(
            f"/workspaces/{ws}/clients/search", params={"email": " ADA1@example.org"}
        )
        assert [c["id"] for c in found.json()["items"]] == [created[1]["id"]]
        found = await http.get(f"/workspaces/{ws}/clients/search", params={"phone": "442079460958"})
        assert [c["id"] for c in found.json()["items"]] == [one["id"]]
        found = await http.get(f"/workspaces/{ws}/clients/search", params={"name": "ada3 LOVE"})
        assert [c["id"] for c in found.json()["items"]] == [created[3]["id"]]
        found = await http.get(
            f"/workspaces/{other}/clients/search", params={"email": "ada1@example.org"}
        )
        assert found.status_code == 200 and found.json()["items"] == []
        # soft delete
        assert (await http.delete(f"/workspaces/{ws}/clients/{one['id']}")).status_code == 204
        assert (await http.get(f"/workspaces/{ws}/clients/{one['id']}")).status_code == 404
        assert (await http.delete(f"/workspaces/{ws}/clients/{one['id']}")).status_code == 404
        assert (await raw_rows(engine))[one["id"]]["is_active"] is False
        page = (await http.get(f"/workspaces/{ws}/clients")).json()
        assert one["id"] not in [c["id"] for c in page["items"]] and len(page["items"]) == 4


async def test_bad_input_is_refused_and_writes_nothing(
    engine: AsyncEngine, database_url: URL
) -> None:
    settings = make_settings(database_url, api_token=TOKEN, max_body_bytes=200_000)
    async with running_app(settings) as (app, http):
        await set_phase(engine, app, Phase.DUAL_WRITE)
        ws = uuid.uuid4()
        base = f"/workspaces/{ws}/clients"
        ok = (await http.post(base, json=new_client(1))).json()
        before = await raw_rows(engine)

        async def refused(method: str, url: str, status: int, **kw: object) -> str:
            r = await http.request(method, url, **kw)  # type: ignore[arg-type]
            assert r.status_code == status, (url, r.status_code, r.text)
            detail = r.json()["detail"]
            assert isinstance(detail, str) and "\n" not in detail
            return detail

        too_long = {**new_client(2), "first_name": "x" * 201}
        assert "first_name" in await refused("POST", base, 422, json=too_long)
        await refused("POST", base, 422, json={**new_client(2), "email": "e" * 321})
        await refused("POST", base, 422, json={**new_client(2), "email": "not-an-email"})
        await refused("POST", base, 422, json={**new_client(2), "phone": "call me"})
        await refused("POST", base, 422, json={**new_client(2), "address": "a" * 1001})
        await refused("POST", base, 422, json={**new_client(2), "medical_history": "m" * 100_001})
        await refused("POST", base, 422, json={**new_client(2), "first_name": "nul\x00"})
        await refused("POST", base, 422, json={**new_client(2), "first_name": "   "})
        await refused("POST", base, 422, json={**new_client(2), "id": str(uuid.uuid4())})
        await refused("POST", base, 422, json={"last_name": "only"})
        lone = b'{"first_name": "\\ud800", "last_name": "x"}'
        detail = await refused(
            "POST", base, 422, content=lone, headers={"content-type": "application/json"}
        )
        assert "unicode" in detail.lower()
        bad_utf8 = b'{"first_name": "\xff\xfe", "last_name": "x"}'
        await refused(
            "POST", base, 400, content=bad_utf8, headers={"content-type": "application/json"}
        )
        await refused("POST", base, 413, json={**new_client(2), "medical_history": "m" * 250_000})
        await refused("POST", "/workspaces/not-a-uuid/clients", 422, json=new_client(2))
        await refused("GET", f"{base}/not-a-uuid", 422)
        await refused("GET", f"{base}/{uuid.uuid4()}", 404)
        await refused("GET", f"/workspaces/{uuid.uuid4()}/clients", 404)
        await refused("PATCH", f"{base}/{uuid.uuid4()}", 404, json={"phone": None})
        await refused("PATCH", f"{base}/{ok['id']}", 422, json={})
        await refused("PATCH", f"{base}/{ok['id']}", 422, json={"first_name": None})
        await refused("PATCH", f"{base}/{ok['id']}", 422, json={"phone": "p" * 51})
        await refused("GET", base, 422, params={"limit": 0})
        await refused("GET", base, 422, params={"limit": 501})
        await refused("GET", base, 422, params={"after": "zzz"})
        await refused("GET", f"{base}/search", 400)
        await refused("GET", f"{base}/search", 400, params={"email": "  "})
        await refused("GET", f"{base}/search", 400, params={"phone": "+-"})
        await refused("GET", f"{base}/search", 400, params={"email": "a@b.c", "name": "x"})
        await refused("GET", f"{base}/search", 422, params={"email": "e" * 321})
        assert await raw_rows(engine) == before


async def test_token_is_required_when_set(database_url: URL) -> None:
    settings = make_settings(database_url, api_token=TOKEN)
    async with running_app(settings, token=None) as (_, http):
        ws = uuid.uuid4()
        assert (await http.get(f"/workspaces/{ws}/clients")).status_code == 401
        r = await http.post(
            f"/workspaces/{ws}/clients",
            json=new_client(1),
            headers={"Authorization": "Bearer nope"},
        )
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = await http.get(
            f"/workspaces/{ws}/clients", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert r.status_code == 404  # authorised; the workspace has no client
        assert (await http.get("/healthz")).status_code == 200


async def test_metrics_and_health(database_url: URL) -> None:
    metrics = Metrics()
    async with running_app(make_settings(database_url), metrics=metrics, token=None) as (_, http):
        ws = uuid.uuid4()
        created = (await http.post(f"/workspaces/{ws}/clients", json=new_client(1))).json()
        await http.get(f"/workspaces/{ws}/clients/{created['id']}")
        health = (await http.get("/healthz")).json()
        assert health["phase"] == "plaintext" and health["can_encrypt"] is True
        r = await http.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"] == CONTENT_TYPE_LATEST
        assert 'route="/workspaces/{workspace_id}/clients/{client_id}"' in r.text
        assert created["id"] not in r.text and "ada1" not in r.text
        n = metrics.value(
            "dualwrite_http_request_duration_seconds_count",
            method="GET",
            route="/workspaces/{workspace_id}/clients/{client_id}",
            status="200",
        )
        assert n == 1


async def test_tampered_ciphertext_answers_500_generic(
    engine: AsyncEngine, database_url: URL
) -> None:
    metrics = Metrics()
    async with running_app(make_settings(database_url), metrics=metrics, token=None) as (app, http):
        await set_phase(engine, app, Phase.DUAL_WRITE)
        ws = uuid.uuid4()
        a, b = [
            (await http.post(f"/workspaces/{ws}/clients", json=new_client(i))).json()
            for i in (1, 2)
        ]
        await set_phase(engine, app, Phase.BACKFILL)
        await set_phase(engine, app, Phase.READ_SWITCH)
        await flip_byte(engine, a["id"], "medical_history_encrypted", 20)
        r = await http.get(f"/workspaces/{ws}/clients/{a['id']}")
        assert r.status_code == 500
        assert r.json() == {"detail": "internal error: a stored value could not be read"}
        assert "notes" not in r.text and "Ada" not in r.text
        labels = {"operation": "decrypt", "migration": "clients_pii", "field": "medical_history"}
        assert metrics.value("dualwrite_crypto_failures_total", **labels) == 1
        other = await http.get(f"/workspaces/{ws}/clients/{b['id']}")
        assert other.status_code == 200 and other.json() == b


async def test_write_refused_without_the_current_key(
    engine: AsyncEngine, database_url: URL
) -> None:
    # this instance is told v2 is current but holds only v1: the keyring cannot be built
    settings = make_settings(database_url, encryption_current_key="v2")
    async with running_app(settings, token=None) as (app, http):
        ws = uuid.uuid4()
        created = await http.post(f"/workspaces/{ws}/clients", json=new_client(1))
        assert created.status_code == 201  # plaintext phase needs no key
        await set_phase(engine, app, Phase.DUAL_WRITE)
        before = await raw_rows(engine)
        r = await http.post(f"/workspaces/{ws}/clients", json=new_client(2))
        assert r.status_code == 503
        assert "cannot encrypt" in r.json()["detail"] and "v2" in r.json()["detail"]
        r = await http.patch(
            f"/workspaces/{ws}/clients/{created.json()['id']}", json={"phone": None}
        )
        assert r.status_code == 503
        assert await raw_rows(engine) == before and await count_rows(engine) == 1
        assert (await http.get("/healthz")).json()["can_encrypt"] is False


async def test_openapi_tells_the_truth_about_the_clients_routes(database_url: URL) -> None:
    async with running_app(make_settings(database_url), token=None) as (_, http):
        open_spec = (await http.get("/openapi.json")).json()
    async with running_app(make_settings(database_url, api_token=TOKEN)) as (_, http):
        guarded_spec = (await http.get("/openapi.json")).json()
    base = "/workspaces/{workspace_id}/clients"
    item = base + "/{client_id}"
    paths = open_spec["paths"]
    for path, method in ((base, "post"), (base, "get"), (f"{base}/search", "get"),
                         (item, "get"), (item, "patch"), (item, "delete")):  # fmt: skip
        op = paths[path][method]
        assert "security" not in op and "401" not in op["responses"]  # no API_TOKEN: open
        assert {"422", "500", "503"} <= set(op["responses"])
        for code, answer in op["responses"].items():
            if code >= "400":
                ref = answer["content"]["application/json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/ErrorBody"
        guarded = guarded_spec["paths"][path][method]
        assert guarded["security"] == [{"ApiToken": []}] and "401" in guarded["responses"]
    created = paths[base]["post"]["responses"]["201"]["links"]
    assert set(created) == {"getClient", "updateClient", "deleteClient"}
    assert created["getClient"]["parameters"]["client_id"] == "$response.body#/id"
    listed = paths[base]["get"]["responses"]["200"]["links"]
    assert listed["deleteClient"]["parameters"]["client_id"] == "$response.body#/items/0/id"
    [criteria] = [
        p for p in paths[f"{base}/search"]["get"]["parameters"] if p["name"] == "criteria"
    ]
    assert criteria["explode"] and criteria["schema"]["maxProperties"] == 1
    patch = open_spec["components"]["schemas"]["ClientPatch"]
    assert patch["minProperties"] == 1 and patch["properties"]["first_name"]["type"] == "string"
    assert "HTTPValidationError" not in open_spec["components"]["schemas"]
