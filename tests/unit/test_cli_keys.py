"""``dualwrite keys generate`` / ``dualwrite keys list``: output shapes, generated keys that
load, one-line errors without tracebacks, and never any key bytes in the output."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dualwrite.cli import app

ENV_VARS = (
    "ENCRYPTION_KEY",
    "ENCRYPTION_KEY_VERSION",
    "ENCRYPTION_KEYS",
    "ENCRYPTION_CURRENT_KEY",
    "ENCRYPTION_KEYS_FILE",
    "KEY_LIFETIME_DAYS",
    "BLIND_INDEX_KEY",
)
B64_32 = r"[A-Za-z0-9+/]{43}="


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    """A runner in an empty folder (no .env) with no key variables set."""
    monkeypatch.chdir(tmp_path)
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    return CliRunner()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def assert_no_key(output: str, *keys: bytes) -> None:
    for key in keys:
        for form in (b64(key), key.hex(), base64.urlsafe_b64encode(key).decode()):
            for i in range(len(form) - 11):
                assert form[i : i + 12] not in output


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        ([], rf"ENCRYPTION_KEY={B64_32}"),
        (["--version", "v2"], rf"v2={B64_32}"),
        (["--version", "v10"], rf"v10={B64_32}"),
        (["--blind-index"], rf"BLIND_INDEX_KEY={B64_32}"),
    ],
)
def test_generate_prints_one_assignment(runner: CliRunner, args: list[str], pattern: str) -> None:
    result = runner.invoke(app, ["keys", "generate", *args])
    assert result.exit_code == 0, result.output
    assert re.fullmatch(pattern + "\n", result.stdout)
    assert len(base64.b64decode(result.stdout.strip().split("=", 1)[1])) == 32
    assert "secret store" in result.stderr


def test_generated_keys_are_fresh(runner: CliRunner) -> None:
    outs = {runner.invoke(app, ["keys", "generate"]).stdout for _ in range(5)}
    assert len(outs) == 5


@pytest.mark.parametrize(
    "args", [["--version", "2"], ["--version", "v0"], ["--version", "v2", "--blind-index"]]
)
def test_generate_refuses_bad_options(runner: CliRunner, args: list[str]) -> None:
    result = runner.invoke(app, ["keys", "generate", *args])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert result.stdout == ""


def test_generated_key_loads(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    name, _, value = runner.invoke(app, ["keys", "generate"]).stdout.strip().partition("=")
    monkeypatch.setenv(name, value)
    bname, _, bvalue = (
        runner.invoke(app, ["keys", "generate", "--blind-index"]).stdout.strip().partition("=")
    )
    monkeypatch.setenv(bname, bvalue)
    result = runner.invoke(app, ["keys", "list", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["current"] == "v1" and doc["blind_index_key"] == "configured"
    assert_no_key(result.output, base64.b64decode(value), base64.b64decode(bvalue))


def test_list_json_from_env_list(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    monkeypatch.setenv("ENCRYPTION_KEYS", f"v1={b64(k1)},v2={b64(k2)}")
    monkeypatch.setenv("ENCRYPTION_CURRENT_KEY", "v1")
    result = runner.invoke(app, ["keys", "list", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["source"] == "ENCRYPTION_KEYS" and doc["dates_known"] is False
    assert [(k["version"], k["current"]) for k in doc["keys"]] == [("v1", True), ("v2", False)]
    assert all(k["days_left"] == 90 for k in doc["keys"])
    assert doc["blind_index_key"] == "missing"
    assert_no_key(result.output, k1, k2)


def test_list_table_from_file(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    now = datetime.now(UTC)
    path = tmp_path / "keys.json"
    path.write_text(
        json.dumps(
            {
                "current": "v2",
                "keys": [
                    {
                        "version": "v1",
                        "key": b64(k1),
                        "created_at": (now - timedelta(days=100)).isoformat(),
                    },
                    {
                        "version": "v2",
                        "key": b64(k2),
                        "created_at": (now - timedelta(days=10, hours=1)).isoformat(),
                    },
                ],
            }
        )
    )
    monkeypatch.setenv("ENCRYPTION_KEYS_FILE", str(path))
    doc = json.loads(runner.invoke(app, ["keys", "list", "--json"]).stdout)
    assert doc["dates_known"] is True and doc["current"] == "v2"
    assert [k["days_left"] for k in doc["keys"]] == [-10, 79]
    result = runner.invoke(app, ["keys", "list"])
    assert result.exit_code == 0, result.output
    assert "v1" in result.stdout and "v2" in result.stdout and "79" in result.stdout
    assert_no_key(result.output, k1, k2)


def test_list_without_key_is_one_line_error(runner: CliRunner) -> None:
    result = runner.invoke(app, ["keys", "list"])
    assert result.exit_code == 1
    assert result.stderr == (
        "error: no encryption key configured: set ENCRYPTION_KEY "
        "(make one with `dualwrite keys generate`)\n"
    )
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"ENCRYPTION_KEY": b64(os.urandom(16))}, "ENCRYPTION_KEY has the wrong length"),
        ({"ENCRYPTION_KEY": "%%" + b64(os.urandom(32))}, "ENCRYPTION_KEY is not valid base64"),
        (
            {"ENCRYPTION_KEY": b64(os.urandom(32)), "ENCRYPTION_KEYS": f"v2={b64(os.urandom(32))}"},
            "more than one key source",
        ),
    ],
)
def test_list_with_bad_key_is_one_line_error(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], needle: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = runner.invoke(app, ["keys", "list"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert needle in result.stderr and "Traceback" not in result.output
    for value in env.values():
        assert value.strip("%")[:12] not in result.output


def test_keys_group_registered_in_fresh_interpreter(tmp_path: Path) -> None:
    # import the command module first (the circular-import order) and run the real entry point
    code = "import dualwrite.cli.keys; from dualwrite.cli import main; main()"
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    out = subprocess.run(
        [sys.executable, "-c", code, "keys", "--help"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "generate" in out.stdout and "list" in out.stdout
