"""What the admin routes need from the hosting app, and where they find it."""

from __future__ import annotations

from dataclasses import dataclass

from alembic.config import Config
from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncEngine

from dualwrite.config import Settings
from dualwrite.runtime.watcher import PhaseWatcher

__all__ = ["STATE_ATTRIBUTE", "AdminContext", "context_of"]

STATE_ATTRIBUTE = "dualwrite_admin"
"""``app.state.<this>`` holds the :class:`AdminContext` when none is given to the router."""


@dataclass
class AdminContext:
    """What the admin routes need from the hosting app.

    ``keyring_current`` is the key version the fleet must hold before ``dual_write``;
    ``watcher`` (optional) is refreshed after a change so this instance sees it at once;
    ``alembic_cfg`` (optional) locates the contract revision (default ``./alembic.ini``).
    """

    engine: AsyncEngine
    settings: Settings
    keyring_current: str | None
    watcher: PhaseWatcher | None = None
    alembic_cfg: Config | None = None
    actor_prefix: str = "admin-api"


def context_of(request: Request, given: AdminContext | None = None) -> AdminContext | None:
    """``given``, else the app's ``state.dualwrite_admin``, else ``None``."""
    return given or getattr(request.app.state, STATE_ATTRIBUTE, None)
