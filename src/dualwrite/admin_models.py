"""Bodies of the admin API (:mod:`dualwrite.admin`) and how failures become responses.

Requests are pydantic models that refuse unknown keys (422); every error answer is one line of
JSON, ``{"detail": "..."}``, plus ``failures`` when guards refuse a move:

>>> PhaseChange(target="dual_write", reason="start").target
'dual_write'
>>> from dualwrite.errors import GuardsFailedError
>>> refused = GuardsFailedError("refused", ["fleet_on_key: 1 instance lacks v2"])
>>> r = dualwrite_error_response(refused)
>>> r.status_code, r.body
(409, b'{"detail":"refused","failures":[{"guard":"fleet_on_key","reason":"1 instance lacks v2"}]}')

Status codes: 404 unknown migration; 400 unknown phase, illegal move, ``force`` without a reason,
:class:`AdminRequestError`; 409 failing guards and other refusals that depend on the current
state; 503 database unavailable; 500 misconfigured server. :mod:`dualwrite.admin` re-exports
these names.
"""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from dualwrite.errors import (
    ConfigError,
    DatabaseUnavailableError,
    DualwriteError,
    GuardsFailedError,
    IllegalTransitionError,
    UnknownMigrationError,
    UnknownPhaseError,
)
from dualwrite.transitions import ReasonRequiredError

__all__ = [
    "ERROR_RESPONSES",
    "AdminRequestError",
    "BackfillKnobs",
    "BackfillPause",
    "ErrorBody",
    "GateResult",
    "GuardFailure",
    "PhaseChange",
    "dualwrite_error_response",
    "error_response",
    "validation_error_response",
]


# --- request and response bodies --------------------------------------------------------------


class PhaseChange(BaseModel):
    """``POST /admin/migrations/{name}/phase``."""

    model_config = ConfigDict(extra="forbid")
    target: str = Field(max_length=64, description="phase to move to, one step from the current")
    reason: str | None = Field(default=None, max_length=2000, description="kept in the audit log")
    force: bool = Field(default=False, description="override failing guards (needs a reason)")
    expected_version: int | None = Field(
        default=None, ge=1, description="refuse with 409 unless the state is at this version"
    )
    actor: str | None = Field(
        default=None, max_length=200, description="who asks (recorded as admin-api:<actor>)"
    )


class BackfillKnobs(BaseModel):
    """``PATCH /admin/migrations/{name}/backfill``: any subset of the knobs."""

    model_config = ConfigDict(extra="forbid")
    batch_size: int | None = Field(default=None, ge=1, le=100_000)
    max_rows_per_second: float | None = Field(
        default=None, ge=0, le=10_000_000, description="0 = unlimited"
    )
    sleep_ratio: float | None = Field(
        default=None, ge=0, le=100, description="sleep this many times each batch's duration"
    )
    reason: str | None = Field(default=None, max_length=2000)


class BackfillPause(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(default=None, max_length=2000)


class GateResult(BaseModel):
    """``POST /admin/migrations/{name}/gate``: a latency-gate run (see loadtests/)."""

    model_config = ConfigDict(extra="forbid")
    phase: str = Field(max_length=64, description="the phase the gate ran in")
    passed: bool
    summary: dict[str, Any] = Field(default_factory=dict, description="per-endpoint p95s etc.")


class GuardFailure(BaseModel):
    guard: str
    reason: str


class ErrorBody(BaseModel):
    detail: str
    failures: list[GuardFailure] | None = None


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (400, "malformed body, unknown phase, illegal move, force without reason"),
        (401, "missing or wrong bearer token"),
        (404, "unknown migration"),
        (409, "guards refuse (every failing guard listed) or a concurrent change won"),
        (413, "body larger than 64 KiB"),
        (422, "body of the wrong shape"),
        (503, "ADMIN_TOKEN unset or database unreachable"),
    )
}


# --- errors -----------------------------------------------------------------------------------


class AdminRequestError(DualwriteError):
    """A request that is well-formed JSON but asks for nothing sensible (HTTP 400)."""


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
    if isinstance(
        exc, UnknownPhaseError | IllegalTransitionError | ReasonRequiredError | AdminRequestError
    ):
        return error_response(400, str(exc))
    if isinstance(exc, GuardsFailedError):
        failures = [
            dict(zip(("guard", "reason"), f.split(": ", 1), strict=False)) for f in exc.failures
        ]
        return error_response(409, str(exc), failures=failures)
    if isinstance(exc, DatabaseUnavailableError):
        return error_response(503, str(exc))
    if isinstance(exc, ConfigError):
        return error_response(500, f"server misconfigured: {exc}")
    return error_response(409, str(exc))  # other refusals depend on the current state
