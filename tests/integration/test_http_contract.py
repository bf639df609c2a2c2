"""The OpenAPI schema tells the truth: schemathesis, every check and every phase (examples,
coverage, fuzzing, stateful), over every operation of the reference service and the admin
router, served by ``dualwrite serve`` on loopback with a real PostgreSQL -- once with an
operator token and once without any -- finds nothing. Fixed seed, bounded examples."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path

import pytest

from dualwrite.testing import DatabaseFactory
from tests.harness.processes import environment
from tests.harness.service import served

OPERATOR = "contract-operator-token-0001"
READER = "contract-reader-token-00001"
OPERATIONS = 15  # every operation of the schema (a new route must be counted here)
PHASES = ("Examples", "Coverage", "Fuzzing", "Stateful")


async def schemathesis(base_url: str, cwd: Path, max_examples: int, *extra: str) -> str:
    """Run the schemathesis CLI; its report (it exits non-zero on any failure)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "schemathesis.cli", "run", f"{base_url}/openapi.json",
        "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful",
        "--seed", "20251", "--max-examples", str(max_examples), "--workers", "1",
        "--generation-database", "none", "--no-color", "--request-timeout", "30", *extra,
        cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 600)
    report = out.decode(errors="replace")
    assert proc.returncode == 0, report[-8000:]
    return report


def passed_phases(report: str) -> set[str]:
    summary = report.split("Test Phases:", 1)[1]
    return {p for p in PHASES if re.search(rf"✅ {p}\b", summary)}


@pytest.mark.e2e
async def test_schemathesis_finds_no_failure(db_factory: DatabaseFactory, tmp_path: Path) -> None:
    url = await db_factory.create("0003")
    env = environment(
        url,
        ADMIN_TOKENS=f"ops:operator:{OPERATOR},viewer:read:{READER}",
        SOAK_SECONDS="0",
        LOG_FORMAT="json",
    )
    env.pop("ADMIN_TOKEN", None)
    env.pop("API_TOKEN", None)
    log_file = tmp_path / "serve.log"
    try:
        async with served(env, log_file=log_file) as base:
            with_token, without = await asyncio.gather(  # side by side: half the wall time
                schemathesis(base, tmp_path, 20, "--header", f"Authorization: Bearer {OPERATOR}"),
                schemathesis(base, tmp_path, 10),
            )
    finally:
        await db_factory.drop(url)
    for report in (with_token, without):
        assert f"Selected: {OPERATIONS}/{OPERATIONS}" in report, report[-3000:]
        assert f"Tested: {OPERATIONS}" in report
        assert "❌" not in report and "failure" not in report.split("SUMMARY", 1)[1]
    assert passed_phases(with_token) == set(PHASES), with_token[-3000:]
    links = re.search(r"API Links:\s+(\d+) covered", with_token)
    assert links and int(links.group(1)) > 0  # the stateful phase walked the links
    assert passed_phases(without) >= {"Coverage", "Fuzzing"}
    # what the server logged meanwhile: one JSON line per request, no server error, no token
    lines = [json.loads(line) for line in log_file.read_text().splitlines() if line.startswith("{")]
    requests = [line for line in lines if line["event"] == "http_request"]
    assert len(requests) > 1000 and all(r["status"] < 500 for r in requests)
    assert {r["route"] for r in requests} >= {"/admin/migrations/{name}/phase", "/healthz"}
    text = log_file.read_text()
    assert OPERATOR not in text and READER not in text
