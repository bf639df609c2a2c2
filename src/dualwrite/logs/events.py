"""Named events and the request id every line of a request carries.

An event is one log record with a stable name (``event``) and typed fields, rendered by
:mod:`dualwrite.logs.format` as one JSON object (or one readable line on a terminal)::

    >>> import logging
    >>> log_event(logging.getLogger("dualwrite.test"), "phase_changed", migration="m", version=2)

Fields are identifiers, counts, phases, durations and names — never a value from a row, a key,
a token or a SQL parameter. Every event dualwrite emits is listed in :data:`EVENTS`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dualwrite.crypto import BlindIndex, Keyring

__all__ = ["EVENTS", "current_request_id", "log_event", "log_keys", "request_id_var"]

EVENTS: dict[str, str] = {
    "http_request": "one per HTTP request: method, route template, status, duration_ms",
    "phase_changed": "a phase move was applied: migration, from/to phase and version, actor",
    "phase_refused": "guards refused a move: migration, from/to phase, actor, failing guards",
    "backfill_started": "a backfill worker began: migration, mode, shard",
    "backfill_paused": "a backfill worker is holding back (paused knob): migration, mode",
    "backfill_resumed": "a paused backfill worker runs again",
    "backfill_finished": "a backfill worker ended: rows done/failed, why it stopped, seconds",
    "backfill_indexes_deferred": "--defer-indexes dropped the blind-index indexes: names, seconds",
    "backfill_indexes_built": "an encrypt run built missing blind-index indexes: names, seconds",
    "verification_recorded": "a verification run was recorded: counts, full or sample",
    "gate_recorded": "a latency-gate verdict was recorded: migration, phase, passed",
    "keys_loaded": "the keyring of this process: versions held, current version, source",
    "keys_unavailable": "this process holds no usable keyring (reason, never key material)",
    "admin_token_refused": "an admin request was refused (401/403): route, token name if known",
    "admin_tokens_reloaded": "ADMIN_TOKENS_FILE changed and was read again: token names",
}
"""Every event name dualwrite emits, with what it carries."""

request_id_var: ContextVar[str | None] = ContextVar("dualwrite_request_id", default=None)
"""The id of the HTTP request being served (``X-Request-ID``), ``None`` outside requests."""


def current_request_id() -> str | None:
    return request_id_var.get()


def log_event(
    logger: logging.Logger,
    event: str,
    /,
    *,
    level: int = logging.INFO,
    message: str | None = None,
    **fields: Any,
) -> None:
    """Log ``event`` with ``fields`` (rendered as JSON keys; values must be safe to show)."""
    if logger.isEnabledFor(level):
        logger.log(
            level, message or event.replace("_", " "), extra={"event": event, "fields": fields}
        )


def log_keys(keyring: Keyring | None, bidx: BlindIndex | None, reasons: Sequence[str] = ()) -> None:
    """The ``keys_loaded`` (and ``keys_unavailable``) event of a process: versions held, the
    current one, where they came from, whether a blind-index key is held -- never key bytes."""
    log = logging.getLogger("dualwrite.keys")
    if keyring is not None:
        log_event(
            log,
            "keys_loaded",
            versions=sorted(keyring.versions),
            current=keyring.current.version,
            source=keyring.source,
            blind_index_key=bidx is not None,
        )
    if reasons:
        log_event(log, "keys_unavailable", level=logging.WARNING, reason="; ".join(reasons))
