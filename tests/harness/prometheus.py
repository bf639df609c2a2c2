"""A real Prometheus server (Debian package ``prometheus``, with ``promtool``) on loopback.

``.ci/run`` installs the package; outside CI a test that needs it skips with the reason
(:func:`binary`). :func:`running_prometheus` starts one on a free port with a config and the
given rule files, in a temporary folder, and stops it afterwards; :class:`PrometheusApi` speaks
its HTTP API (instant queries, rules, alerts, targets) and waits for conditions.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
T = TypeVar("T")


def binary(name: str) -> str:
    """The path of ``prometheus`` / ``promtool``; skips (fails in CI) when it is missing."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} not installed (apt-get install prometheus; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def promtool(
    *args: str, stdin: str | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *args], input=stdin, capture_output=True, text=True, cwd=cwd,
        timeout=120,
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load_rules(path: Path = DASHBOARDS / "alerts.yml") -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text()))


def alert_rules(doc: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    doc = doc if doc is not None else load_rules()
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def shortened_rules(for_: str = "1s") -> dict[str, Any]:
    """The shipped rules with every ``for:`` cut to ``for_`` (so a test fires them in seconds)."""
    doc = load_rules()
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = for_
    return doc


class PrometheusApi:
    def __init__(self, base: str) -> None:
        self.base = base
        self.http = httpx.AsyncClient(base_url=base, timeout=10)

    async def get(self, path: str, **params: str) -> Any:
        r = await self.http.get(path, params=params)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", (path, params, body)
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (a scalar answer is wrapped as one sample)."""
        data = await self.get("/api/v1/query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    async def value(self, expr: str) -> float | None:
        result = await self.query(expr)
        return float(result[0]["value"][1]) if result else None

    async def alerts(self) -> list[dict[str, Any]]:
        return list((await self.get("/api/v1/alerts"))["alerts"])

    async def rules(self) -> list[dict[str, Any]]:
        groups = (await self.get("/api/v1/rules"))["groups"]
        return [r for g in groups for r in g["rules"]]

    async def targets(self) -> list[dict[str, Any]]:
        return list((await self.get("/api/v1/targets"))["activeTargets"])

    async def firing(self, name: str, **labels: str) -> list[dict[str, Any]]:
        return [
            a
            for a in await self.alerts()
            if a["labels"].get("alertname") == name
            and a["state"] == "firing"
            and all(a["labels"].get(k) == v for k, v in labels.items())
        ]


async def eventually(
    probe: Callable[[], Awaitable[T]], ok: Callable[[T], bool], *, timeout: float, what: str
) -> T:
    """Poll ``probe`` every 0.25 s until ``ok`` holds; fail with the last value at ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await probe()
        if ok(value):
            return value
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"{what}: not reached within {timeout:.0f}s (last: {value!r})")
        await asyncio.sleep(0.25)


def scrape_config(jobs: Mapping[str, Sequence[str]], interval: str = "1s") -> dict[str, Any]:
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": ["alerts.yml"],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(targets)}]}
            for job, targets in jobs.items()
        ],
    }


@asynccontextmanager
async def running_prometheus(
    config: Mapping[str, Any], rules: Mapping[str, Any]
) -> AsyncIterator[PrometheusApi]:
    """``prometheus`` with ``config`` (and ``rules`` as its alerts.yml) until the block ends."""
    exe = binary("prometheus")
    folder = Path(tempfile.mkdtemp(prefix="dualwrite-prometheus-"))
    (folder / "prometheus.yml").write_text(json.dumps(config))
    (folder / "alerts.yml").write_text(yaml.safe_dump(dict(rules), sort_keys=False))
    port = free_port()
    log = (folder / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            exe, f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h", "--log.level=warn",
        ],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    api = PrometheusApi(f"http://127.0.0.1:{port}")
    try:

        async def ready() -> bool:
            try:
                return (await api.http.get("/-/ready")).status_code == 200
            except httpx.HTTPError:
                return proc.poll() is not None

        await eventually(ready, bool, timeout=30, what="prometheus ready")
        assert proc.poll() is None, (folder / "prometheus.log").read_text()[-2000:]
        yield api
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        await api.http.aclose()
        shutil.rmtree(folder, ignore_errors=True)
