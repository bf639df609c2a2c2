"""The log format: JSON lines off a terminal, readable lines on one, named events with their
fields, the request id, registered secrets redacted, exceptions without their messages."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from collections.abc import Iterator

import pytest

from dualwrite.config import Settings
from dualwrite.errors import ConfigError
from dualwrite.logs import (
    JsonFormatter,
    TextFormatter,
    log_event,
    register_settings_secrets,
    reset_logging,
    setup_logging,
    uvicorn_log_config,
)
from dualwrite.logs.events import request_id_var

log = logging.getLogger("dualwrite.test_logs")


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _clean_logging() -> Iterator[None]:
    yield
    reset_logging()


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_when_not_a_terminal_with_event_fields_and_request_id() -> None:
    stream = io.StringIO()
    setup_logging(stream=stream)
    token = request_id_var.set("req-7")
    try:
        log_event(log, "phase_changed", migration="clients_pii", to_version=3)
    finally:
        request_id_var.reset(token)
    log.info("plain %s", "message")
    first, second = lines(stream)
    assert first["event"] == "phase_changed" and first["message"] == "phase changed"
    assert (first["migration"], first["to_version"], first["request_id"]) == (
        "clients_pii",
        3,
        "req-7",
    )
    assert first["level"] == "info" and first["logger"] == "dualwrite.test_logs"
    assert str(first["ts"]).endswith("Z")
    assert second["event"] == "log" and second["message"] == "plain message"
    assert "request_id" not in second


def test_readable_lines_on_a_terminal_and_forced_formats() -> None:
    tty = Tty()
    setup_logging(stream=tty)
    log_event(log, "gate_recorded", migration="m", passed=True)
    line = tty.getvalue()
    assert not line.startswith("{") and "INFO" in line and 'migration="m" passed=true' in line
    forced = Tty()
    setup_logging(stream=forced, settings=Settings(log_format="JSON", log_level="Warning"))
    log.info("hidden")
    log.warning("shown")
    assert [x["message"] for x in lines(forced)] == ["shown"]


def test_secrets_never_printed() -> None:
    settings = Settings(
        admin_tokens="ops:operator:operator-token-xyz-0001,ci:read:reader-token-xyz-00001",
        api_token="api-token-abcdefgh",
        encryption_keys="v1=QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk=",
    )
    register_settings_secrets(settings)
    stream = io.StringIO()
    setup_logging(stream=stream)
    log.warning("oops Bearer operator-token-xyz-0001 and api-token-abcdefgh")
    log_event(
        log,
        "x",
        header="reader-token-xyz-00001",
        key="QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk=",
    )
    out = stream.getvalue()
    for secret in (
        "operator-token-xyz-0001",
        "reader-token-xyz-00001",
        "api-token-abcdefgh",
        "QUJDREVG",
    ):
        assert secret not in out
    assert out.count("***") == 4


def test_exceptions_show_type_and_frames_never_the_message() -> None:
    stream = io.StringIO()
    setup_logging(stream=stream)
    try:
        raise ValueError("invalid input for query argument $1: 'ada@example.org'")
    except ValueError:
        log.exception("request failed")
    try:
        raise ConfigError("ADMIN_TOKENS entry 2: must look like name:scope:token")
    except ConfigError:
        log.exception("start failed")
    driver, ours = lines(stream)
    assert driver["error_type"] == "ValueError" and "error" not in driver
    assert "ada@example.org" not in stream.getvalue()
    assert any("test_logs.py" in frame for frame in driver["traceback"])  # type: ignore[union-attr]
    assert ours["error"] == "ADMIN_TOKENS entry 2: must look like name:scope:token"


def test_quiet_loggers_stay_at_warning() -> None:
    stream = io.StringIO()
    setup_logging(stream=stream, level="debug")
    logging.getLogger("sqlalchemy.engine.Engine").info("SELECT ... [parameters]")
    logging.getLogger("httpx").info("HTTP Request: GET /search?email=ada@example.org")
    assert stream.getvalue() == ""


def test_uvicorn_config_is_the_same_format() -> None:
    config = uvicorn_log_config("json", "info")
    root = logging.getLogger()
    before = list(root.handlers)
    logging.config.dictConfig(config)
    assert any(isinstance(h.formatter, JsonFormatter) for h in root.handlers)
    text_config = uvicorn_log_config("text", "info")
    assert text_config["formatters"]["default"]["()"].endswith("TextFormatter")
    assert TextFormatter  # the class the dotted name refers to
    for h in [h for h in root.handlers if h not in before]:
        root.removeHandler(h)
