"""Request and response bodies of the admin API (:mod:`dualwrite.admin`).

Requests are pydantic models that refuse unknown keys (422); every error answer is one line of
JSON, ``{"detail": "..."}``, plus ``failures`` when guards refuse a move (:class:`ErrorBody`).

>>> PhaseChange(target="dual_write", reason="start").target
'dual_write'
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ERROR_RESPONSES",
    "BackfillKnobs",
    "BackfillPause",
    "ErrorBody",
    "GateResult",
    "GuardFailure",
    "PhaseChange",
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
