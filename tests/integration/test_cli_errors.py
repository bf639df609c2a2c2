"""Bad database configuration: one clear line on stderr, non-zero exit, no traceback, no secret."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "DATA_DIR"))
    }
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "dualwrite.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=ROOT,
        timeout=120,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in err and "Traceback" not in proc.stdout
    lines = [
        line
        for line in err.splitlines()
        if line.strip() and "RuntimeDirWarning" not in line and "user_runtime_dir" not in line
    ]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0]


def test_unreachable_database_url_hides_password() -> None:
    proc = run_cli(
        "db", "current", env={"DATABASE_URL": "postgresql+asyncpg://app:s3cr3t-pw@127.0.0.1:1/app"}
    )
    assert_one_line_error(proc, "cannot connect", "127.0.0.1:1/app")
    assert "s3cr3t-pw" not in proc.stderr + proc.stdout


@pytest.mark.parametrize(
    ("url", "needle"),
    [("mysql://u@h/db", "postgresql+asyncpg"), ("::not a url::", "not a valid database URL")],
)
def test_malformed_database_url(url: str, needle: str) -> None:
    assert_one_line_error(run_cli("db", "current", env={"DATABASE_URL": url}), needle)


@pytest.mark.parametrize("data_dir", ["/proc/dualwrite-test/pg", "/etc/hostname/pg"])
def test_unusable_embedded_data_folder(data_dir: str) -> None:
    proc = run_cli("db", "current", env={"DATA_DIR": data_dir})
    assert_one_line_error(proc, "embedded PostgreSQL data folder")


def test_invalid_setting_is_one_line() -> None:
    proc = run_cli("db", "current", env={"POLL_INTERVAL_SECONDS": "-3"})
    assert_one_line_error(proc, "POLL_INTERVAL_SECONDS")


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"ENCRYPTION_KEY": "not-base64!!"}, "ENCRYPTION_KEY"),
        ({"ENCRYPTION_KEY": "AAAAAAAAAAAAAAAAAAAAAA=="}, "ENCRYPTION_KEY"),  # 16 bytes
        (
            {"ENCRYPTION_KEYS": "v1=" + "A" * 43 + "=", "ENCRYPTION_CURRENT_KEY": "v2"},
            "ENCRYPTION_CURRENT_KEY",
        ),
    ],
)
def test_serve_refuses_to_start_with_a_malformed_key(env: dict[str, str], needle: str) -> None:
    proc = run_cli("serve", "--port", "1", env=env)  # never binds: the key check comes first
    assert_one_line_error(proc, needle)
    assert "AAAAAAAA" not in proc.stderr
