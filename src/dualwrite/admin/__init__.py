"""The admin API: a FastAPI router for phase control, status, backfill knobs, gates and audit.

See :mod:`dualwrite.admin.router` for the contract (authentication, status codes, audit).
"""

from dualwrite.admin.context import STATE_ATTRIBUTE, AdminContext
from dualwrite.admin.models import (
    BackfillKnobs,
    BackfillPause,
    ErrorBody,
    GateResult,
    GuardFailure,
    PhaseChange,
)
from dualwrite.admin.route import ADMIN_MAX_BODY_BYTES
from dualwrite.admin.router import admin_router

__all__ = [
    "ADMIN_MAX_BODY_BYTES",
    "STATE_ATTRIBUTE",
    "AdminContext",
    "BackfillKnobs",
    "BackfillPause",
    "ErrorBody",
    "GateResult",
    "GuardFailure",
    "PhaseChange",
    "admin_router",
]
