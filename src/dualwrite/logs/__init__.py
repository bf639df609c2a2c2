"""Structured logs: one set-up for every process, named events, request ids, no secrets.

* :mod:`~dualwrite.logs.setup` -- :func:`setup_logging` (``serve``, every CLI command, the
  backfill worker) and :func:`uvicorn_log_config`; JSON lines off a terminal, readable lines on
  one, ``LOG_FORMAT`` / ``LOG_LEVEL`` to choose;
* :mod:`~dualwrite.logs.format` -- the JSON and text formatters; registered secrets are
  replaced by ``***`` and exceptions are shown by type and frames, never by message;
* :mod:`~dualwrite.logs.events` -- :func:`log_event` and :data:`EVENTS` (every event name);
* :mod:`~dualwrite.logs.access` -- :class:`RequestLog`, the per-request event and
  ``X-Request-ID``.
"""

from dualwrite.logs.access import REQUEST_ID_HEADER, RequestLog
from dualwrite.logs.events import EVENTS, current_request_id, log_event, log_keys
from dualwrite.logs.format import JsonFormatter, TextFormatter, redact, register_secret
from dualwrite.logs.setup import (
    register_settings_secrets,
    reset_logging,
    setup_logging,
    uvicorn_log_config,
)

__all__ = [
    "EVENTS",
    "REQUEST_ID_HEADER",
    "JsonFormatter",
    "RequestLog",
    "TextFormatter",
    "current_request_id",
    "log_event",
    "log_keys",
    "redact",
    "register_secret",
    "register_settings_secrets",
    "reset_logging",
    "setup_logging",
    "uvicorn_log_config",
]
