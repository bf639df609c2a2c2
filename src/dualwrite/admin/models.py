"""Request and response bodies of the admin API (:mod:`dualwrite.admin`), and its error model.

Requests refuse unknown keys and carry every constraint the handlers enforce, so a body the
OpenAPI schema allows is a body the route accepts (its answer may still depend on the state:
404, 409). Every error answer, validation errors included, is one :class:`ErrorBody`:
``{"detail": "..."}``, plus ``failures`` when guards refuse a move.

>>> PhaseChange(target="dual_write", reason="start").target
<Phase.DUAL_WRITE: 'dual_write'>
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from dualwrite.admin.fields import (
    JSON_NUMBER,
    NOT_BLANK,
    JsonBool,
    Text,
    refuse_null,
    schema_extra,
)
from dualwrite.phases import Phase

__all__ = [
    "AuditPage",
    "BackfillKnobs",
    "BackfillPause",
    "ErrorBody",
    "GateRecorded",
    "GateResult",
    "GuardFailure",
    "KnobsState",
    "MigrationDetail",
    "MigrationList",
    "MigrationSummary",
    "PhaseChange",
    "error_responses",
]

Reason = Annotated[str, Text(2000)]
Actor = Annotated[str, Text(200)]

# --- requests ---------------------------------------------------------------------------------


class PhaseChange(BaseModel):
    """``POST /admin/migrations/{name}/phase``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={  # force needs a reason that is not blank
            "if": {"properties": {"force": {"const": True}}, "required": ["force"]},
            "then": {
                "required": ["reason"],
                "properties": {"reason": {"type": "string", "pattern": NOT_BLANK}},
            },
            "examples": [
                {"target": "dual_write", "reason": "expand applied", "actor": "alice"},
                {"target": "read_switch", "force": True, "reason": "gate checked by hand"},
            ],
        },
    )
    target: Phase = Field(description="phase to move to, one step from the current")
    reason: Reason | None = Field(default=None, description="kept in the audit log")
    force: JsonBool = Field(default=False, description="override failing guards (needs a reason)")
    expected_version: Annotated[int, Field(ge=1, le=2**31 - 1), JSON_NUMBER] | None = Field(
        default=None, description="refuse with 409 unless the state is at this version"
    )
    actor: Actor | None = Field(
        default=None, description="who asks (audited as admin-api:<token name>:<actor>)"
    )

    @model_validator(mode="after")
    def _reason_when_forced(self) -> PhaseChange:
        if self.force and not (self.reason and self.reason.strip()):
            raise ValueError("a forced change needs a reason (it is kept in the audit log)")
        return self


_KNOB_FIELDS = ("batch_size", "max_rows_per_second", "sleep_ratio")
Rate = Annotated[float, Field(ge=0, le=10_000_000), JSON_NUMBER]
Ratio = Annotated[float, Field(ge=0, le=100), JSON_NUMBER]


class BackfillKnobs(BaseModel):
    """``PATCH /admin/migrations/{name}/backfill``: at least one knob (``null`` is not a value)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=schema_extra(
            anyOf=[{"required": [k]} for k in _KNOB_FIELDS],
            examples=[{"batch_size": 500, "sleep_ratio": 0.5, "reason": "daytime load"}],
        ),
    )
    batch_size: Annotated[int, Field(ge=1, le=100_000), JSON_NUMBER] | SkipJsonSchema[None] = None
    max_rows_per_second: Rate | SkipJsonSchema[None] = Field(
        default=None, description="0 = unlimited"
    )
    sleep_ratio: Ratio | SkipJsonSchema[None] = Field(
        default=None, description="sleep this many times each batch's duration"
    )
    reason: Reason | None = None

    _not_null = refuse_null(
        *_KNOB_FIELDS, message="must be a number (omit the knob to leave it unchanged)"
    )

    @model_validator(mode="after")
    def _some_knob(self) -> BackfillKnobs:
        if not any(getattr(self, k) is not None for k in _KNOB_FIELDS):
            raise ValueError("give batch_size, max_rows_per_second or sleep_ratio")
        return self


class BackfillPause(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"reason": "peak"}]})
    reason: Reason | None = None


def _jsonb_safe(value: Any) -> Any:
    """``value`` as PostgreSQL ``jsonb`` stores it: NUL and lone surrogates become U+FFFD."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {_jsonb_safe(k): _jsonb_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonb_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("numbers must be finite")
    return value


class GateResult(BaseModel):
    """``POST /admin/migrations/{name}/gate``: a latency-gate run (see loadtests/).

    ``summary`` is kept as given, except that characters ``jsonb`` cannot store (NUL, lone
    surrogates) are replaced by U+FFFD.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "phase": "backfill",
                    "passed": True,
                    "summary": {"endpoints": {"GET /clients/{id}": {"p95_ms": 4.2}}},
                }
            ]
        },
    )
    phase: Phase = Field(description="the phase the gate ran in")
    passed: JsonBool
    summary: dict[str, Any] = Field(default_factory=dict, description="per-endpoint p95s etc.")

    @field_validator("summary")
    @classmethod
    def _storable(cls, value: dict[str, Any]) -> dict[str, Any]:
        safe: dict[str, Any] = _jsonb_safe(value)
        return safe


# --- answers ----------------------------------------------------------------------------------


class MigrationSummary(BaseModel):
    """One migration: phase, version, what the phase means, backfill knobs."""

    name: str
    table: str
    fields: list[str]
    phase: Phase
    version: int
    changed_at: str | None
    created_at: str | None
    behaviour: dict[str, Any]
    backfill_control: dict[str, Any]


class MigrationList(BaseModel):
    migrations: list[MigrationSummary]


class MigrationDetail(MigrationSummary):
    """:class:`MigrationSummary` plus coverage, backfill, results, fleet and next moves
    (see :func:`dualwrite.control.report.migration_report`)."""

    model_config = ConfigDict(extra="allow")
    now: str | None
    coverage: dict[str, Any]
    backfill: dict[str, Any]
    last_verification: dict[str, Any] | None
    last_gate: dict[str, Any] | None
    read_events_since_phase_entered: dict[str, Any]
    fleet: dict[str, Any]
    moves: dict[str, Any]


class KnobsState(BaseModel):
    name: str
    backfill_control: dict[str, Any]


class GateRecorded(BaseModel):
    name: str
    phase: Phase
    passed: bool
    finished_at: str


class AuditEntry(BaseModel):
    id: int | None
    at: str | None
    migration: str
    actor: str = Field(description="admin-api:<token name>[:<actor>], cli:<user>@<host>, ...")
    action: str
    outcome: str
    from_phase: str | None
    to_phase: str | None
    from_version: int | None
    to_version: int | None
    reason: str | None
    forced: bool
    guards: list[dict[str, Any]]


class AuditPage(BaseModel):
    records: list[AuditEntry]


# --- errors -----------------------------------------------------------------------------------


class GuardFailure(BaseModel):
    guard: str
    reason: str


class ErrorBody(BaseModel):
    """Every error answer (4xx and 5xx): one line of ``detail``; ``failures`` lists every failing
    guard of a refused phase move (409)."""

    detail: str
    failures: list[GuardFailure] | SkipJsonSchema[None] = None


_WHY: dict[int, str] = {
    400: "malformed JSON body",
    401: "missing, wrong or revoked bearer token",
    403: "a read-only token on a route that changes something",
    404: "unknown migration",
    409: "refused in the current state: failing guards (listed in failures), a move that is not "
    "one step, a concurrent change, a stale expected_version",
    413: "body larger than 64 KiB",
    422: "a parameter or body that does not match the schema",
    500: "internal error (generic message)",
    503: "no admin token configured, or the database is unreachable",
}


def error_responses(*codes: int, why: dict[int, str] | None = None) -> dict[int | str, Any]:
    """FastAPI ``responses=`` for ``codes``, each an :class:`ErrorBody` with its reason."""
    reasons = {**_WHY, **(why or {})}
    return {code: {"model": ErrorBody, "description": reasons[code]} for code in codes}
