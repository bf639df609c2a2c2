"""The README's first command: the whole migration under live traffic, through the real CLI."""

from __future__ import annotations

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
    env["DATA_DIR"] = str(tmp_path / "pg")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "dualwrite.cli", "demo", "--rows", "3000"],
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
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-2000:] + out[-2000:]
    assert "THROWAWAY" in out  # no keys configured: says so
    for phase in ("dual_write", "backfill", "read_switch", "contract", "finalized"):
        assert f"phase → {phase}" in out
    assert "0 problems" in out
    assert (
        "latency gate in backfill: passed" in out and "latency gate in read_switch: passed" in out
    )
    assert "migration finalized with zero lost writes" in out
    assert "Traceback" not in proc.stderr
