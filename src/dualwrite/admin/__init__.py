"""The admin API: a FastAPI router for phase control, status, backfill knobs, gates and audit.

See :mod:`dualwrite.admin.router` for the contract (status codes, audit, links) and
:mod:`dualwrite.admin.tokens` for the tokens (names, ``read`` / ``operator`` scopes, rotation).
"""

from dualwrite.admin.context import STATE_ATTRIBUTE, AdminContext
from dualwrite.admin.models import (
    BackfillKnobs,
    BackfillPause,
    ErrorBody,
    GateResult,
    GuardFailure,
    PhaseChange,
    error_responses,
)
from dualwrite.admin.route import ADMIN_MAX_BODY_BYTES
from dualwrite.admin.router import admin_router
from dualwrite.admin.tokens import AdminToken, TokenSource

__all__ = [
    "ADMIN_MAX_BODY_BYTES",
    "STATE_ATTRIBUTE",
    "AdminContext",
    "AdminToken",
    "BackfillKnobs",
    "BackfillPause",
    "ErrorBody",
    "GateResult",
    "GuardFailure",
    "PhaseChange",
    "TokenSource",
    "admin_router",
    "error_responses",
]
