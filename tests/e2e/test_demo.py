"""The README's first command: the whole migration under live traffic, through the real CLI
(``--json``: the summary on stdout as one object, the progress on stderr)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_walks_every_phase_with_zero_lost_writes(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("DATABASE_URL", "ENCRYPTION_", "BLIND_INDEX", "API_TOKEN", "ADMIN_TOKEN")
        )
    }
    for attempt in range(3):  # a busy machine can fail the demo's latency gate: try again
        env["DATA_DIR"] = str(tmp_path / f"pg-{attempt}")  # a fresh database each time
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "dualwrite.cli", "demo", "--rows", "3000", "--json"],
                capture_output=True,
                text=True,
                env=env,
                cwd=ROOT,
                timeout=300,
            )
        finally:
            subprocess.run(
                [sys.executable, "-m", "dualwrite.cli", "db", "stop"],
                env=env,
                cwd=ROOT,
                capture_output=True,
                timeout=60,
            )
        if proc.returncode == 0 or "latency gate failed" not in proc.stderr + proc.stdout:
            break
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, err[-2000:] + out[-2000:]
    summary = json.loads(out)  # exactly one JSON object
    assert "THROWAWAY" in err  # no keys configured: says so
    for phase in ("dual_write", "backfill", "read_switch", "contract", "finalized"):
        assert f"phase → {phase}" in err
    assert summary["phases_passed"] == [
        "dual_write", "backfill", "read_switch", "contract", "finalized"
    ]  # fmt: skip
    assert summary["rows"] == 3000 and summary["mismatches"] == 0
    assert summary["failed_requests"] == 0 and summary["lost_writes"] == 0
    assert summary["writes_during_migration"] > 0
    assert set(summary["p95_ms_per_phase"]) >= {"backfill", "read_switch", "finalized"}
    assert (
        "latency gate in backfill: passed" in err and "latency gate in read_switch: passed" in err
    )
    rewrite = summary["rewrite"]
    assert rewrite["status"] == "done" and rewrite["method"] == "vacuum-full"
    assert 0 <= rewrite["lock_seconds"] < 10.0  # within the demo's explicit budget
    assert summary["residual_plaintext"] == 0
    assert "Traceback" not in err
