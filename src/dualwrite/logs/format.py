"""How a log record is written: one JSON object per line, or one readable line on a terminal.

Every record carries ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``event`` (``"log"`` for a
plain message), ``message``, ``request_id`` when it happened inside an HTTP request, and the
event's fields::

    {"ts": "2025-01-01T12:00:00.123Z", "level": "info", "logger": "dualwrite.control",
     "event": "phase_changed", "message": "phase changed", "migration": "clients_pii", ...}

Secrets never reach the output: every value registered with :func:`register_secret` (admin,
API and metrics tokens, key material — :func:`dualwrite.logs.setup.register_settings_secrets`
registers them) is replaced by ``***`` in the finished line, and an exception is rendered as
its type and its frames (``file:line in function``) — **never its message**, since driver errors
can quote a query argument (asyncpg's do). :class:`~dualwrite.errors.DualwriteError` messages
are kept: they are written to be safe (one line, no plaintext, no key).

>>> register_secret("s3cr3t-token-value")
>>> redact("Bearer s3cr3t-token-value")
'Bearer ***'
"""

from __future__ import annotations

import json
import logging
import threading
import traceback
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from dualwrite.logs.events import current_request_id

__all__ = ["JsonFormatter", "TextFormatter", "redact", "register_secret"]

_SECRETS: set[str] = set()
_LOCK = threading.Lock()
_MIN_SECRET = 8  # shorter strings would blank out ordinary words


def register_secret(value: str | None) -> None:
    """Never print ``value`` (at least 8 characters) in any log line of this process."""
    if value and len(value) >= _MIN_SECRET:
        with _LOCK:
            _SECRETS.add(value)


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, "***")
    return text


_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def _exception(
    exc_info: tuple[type[BaseException], BaseException, TracebackType | None],
) -> dict[str, Any]:
    from dualwrite.errors import DualwriteError  # errors imports nothing of ours: no cycle

    kind, exc, tb = exc_info
    out: dict[str, Any] = {"error_type": kind.__name__}
    if isinstance(exc, DualwriteError):
        out["error"] = str(exc).splitlines()[0] if str(exc) else ""
    out["traceback"] = [
        f"{frame.filename}:{frame.lineno} in {frame.name}" for frame in traceback.extract_tb(tb)
    ]
    return out


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    event_fields = getattr(record, "fields", None)
    if isinstance(event_fields, dict):
        fields.update(event_fields)
    for key, value in record.__dict__.items():  # ``extra={...}`` of plain log calls
        if key not in _RESERVED and key not in ("event", "fields") and not key.startswith("_"):
            fields[key] = value
    return fields


def _payload(record: logging.LogRecord) -> dict[str, Any]:
    ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
    out: dict[str, Any] = {
        "ts": ts.replace("+00:00", "Z"),
        "level": record.levelname.lower(),
        "logger": record.name,
        "event": getattr(record, "event", None) or "log",
        "message": record.getMessage(),
    }
    rid = current_request_id()
    if rid is not None:
        out["request_id"] = rid
    for key, value in _fields(record).items():
        out.setdefault(key, value)
    if record.exc_info and record.exc_info[0] is not None:
        out.update(_exception(record.exc_info))
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per line (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        line = json.dumps(_payload(record), default=str, ensure_ascii=False)
        return redact(line)


class TextFormatter(logging.Formatter):
    """``12:00:00.123 INFO  dualwrite.control phase changed  migration=clients_pii ...``."""

    def format(self, record: logging.LogRecord) -> str:
        data = _payload(record)
        ts = data.pop("ts")[11:23]
        head = f"{ts} {data.pop('level').upper():<7} {data.pop('logger')} {data.pop('message')}"
        data.pop("event")
        tb = data.pop("traceback", None)
        rest = " ".join(
            f"{k}={json.dumps(v, default=str, ensure_ascii=False)}" for k, v in data.items()
        )
        line = f"{head}  {rest}" if rest else head
        if tb:
            line += "".join(f"\n    {frame}" for frame in tb)
        return redact(line)
