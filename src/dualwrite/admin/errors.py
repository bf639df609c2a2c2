"""How failures become admin API answers: one line of JSON, one status per error class.

>>> from dualwrite.errors import GuardsFailedError
>>> from dualwrite.phases import GuardResult
>>> failure = GuardResult("fleet_on_key", False, "1 instance lacks v2")
>>> refused = GuardsFailedError("refused", [failure])
>>> r = dualwrite_error_response(refused)
>>> r.status_code, r.body
(409, b'{"detail":"refused","failures":[{"guard":"fleet_on_key","reason":"1 instance lacks v2"}]}')

Status codes: 404 unknown migration; 400 unknown phase, ``force`` without a reason,
:class:`~dualwrite.errors.RequestError` (the request models refuse these with 422 first); 409
failing guards, a move that is not one step from the current phase, and other refusals that
depend on the current state; 503 database unavailable; 500 misconfigured server.
"""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from dualwrite.errors import (
    ConfigError,
    DatabaseUnavailableError,
    DualwriteError,
    GuardsFailedError,
    IllegalTransitionError,
    ReasonRequiredError,
    RequestError,
    UnknownMigrationError,
    UnknownPhaseError,
)

__all__ = ["dualwrite_error_response", "error_response", "validation_error_response"]


def error_response(status: int, detail: str, **extra: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"detail": detail, **extra}, status_code=status, headers=headers)


def validation_error_response(exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return error_response(400, "malformed JSON body")
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return error_response(422, f"invalid {where}: {first.get('msg', 'invalid value')}{more}")


def dualwrite_error_response(exc: DualwriteError) -> JSONResponse:
    if isinstance(exc, UnknownMigrationError):
        return error_response(404, str(exc))
    if isinstance(exc, UnknownPhaseError | ReasonRequiredError | RequestError):
        return error_response(400, str(exc))
    if isinstance(exc, IllegalTransitionError):  # legal or not depends on the current phase
        return error_response(409, str(exc))
    if isinstance(exc, GuardsFailedError):
        failures = [{"guard": f.name, "reason": f.reason} for f in exc.failures]
        return error_response(409, str(exc), failures=failures)
    if isinstance(exc, DatabaseUnavailableError):
        return error_response(503, str(exc))
    if isinstance(exc, ConfigError):
        return error_response(500, f"server misconfigured: {exc}")
    return error_response(409, str(exc))  # other refusals depend on the current state
