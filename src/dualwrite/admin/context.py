"""What the admin routes need from the hosting app, and where they find it."""

from __future__ import annotations

from dataclasses import dataclass, field

from alembic.config import Config
from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncEngine

from dualwrite.admin.tokens import AdminToken, TokenSource
from dualwrite.config import Settings
from dualwrite.runtime.watcher import PhaseWatcher

__all__ = ["STATE_ATTRIBUTE", "AdminContext", "actor_of", "context_of"]

STATE_ATTRIBUTE = "dualwrite_admin"
"""``app.state.<this>`` holds the :class:`AdminContext` when none is given to the router."""


@dataclass
class AdminContext:
    """What the admin routes need from the hosting app.

    ``keyring_current`` is the key version the fleet must hold before ``dual_write``;
    ``watcher`` (optional) is refreshed after a change so this instance sees it at once;
    ``alembic_cfg`` (optional) locates the contract revision (default ``./alembic.ini``);
    ``tokens`` (optional) is built from ``settings`` on first use when not given (build it up
    front, as the reference service does, to fail at start on a malformed configuration).
    """

    engine: AsyncEngine
    settings: Settings
    keyring_current: str | None
    watcher: PhaseWatcher | None = None
    alembic_cfg: Config | None = None
    actor_prefix: str = "admin-api"
    tokens: TokenSource | None = field(default=None, repr=False)

    def token_source(self) -> TokenSource:
        """The token source (raises :class:`~dualwrite.errors.ConfigError` when malformed)."""
        if self.tokens is None:
            self.tokens = TokenSource(self.settings)
        return self.tokens


def context_of(request: Request, given: AdminContext | None = None) -> AdminContext | None:
    """``given``, else the app's ``state.dualwrite_admin``, else ``None``."""
    return given or getattr(request.app.state, STATE_ATTRIBUTE, None)


def actor_of(ctx: AdminContext, request: Request, asked: str | None = None) -> str:
    """The audit actor: ``admin-api:<token name>``, plus ``:<actor>`` when the body names one.

    The token's *name* (see :mod:`dualwrite.admin.tokens`) — never its value.
    """
    token: AdminToken | None = getattr(request.state, "admin_token", None)
    actor = f"{ctx.actor_prefix}:{token.name if token else 'unknown'}"
    return f"{actor}:{asked}" if asked else actor
