"""Pieces of the service's HTTP surface that are not routes: the health answer, the ``Allow``
header of a 405, the key-load event.

>>> order_methods({"PATCH", "GET", "HEAD", "DELETE"})
['GET', 'HEAD', 'PATCH', 'DELETE']
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from fastapi import Request
from pydantic import BaseModel
from starlette.routing import Match

from dualwrite.crypto import BlindIndex, Keyring
from dualwrite.logs import log_event

__all__ = ["Health", "allowed_methods", "log_keys", "order_methods"]

log = logging.getLogger("clients_service")

_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class Health(BaseModel):
    """``GET /healthz``: liveness plus what this instance observes."""

    status: str
    migration: str
    phase: str
    version: int
    can_encrypt: bool


def order_methods(methods: Iterable[str]) -> list[str]:
    """HTTP methods in the usual order (unknown ones last, alphabetically)."""
    rank = {m: i for i, m in enumerate(_ORDER)}
    return sorted(set(methods), key=lambda m: (rank.get(m, len(_ORDER)), m))


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves on this request's path.

    Starlette answers a 405 from the first route whose path matches, so its ``Allow`` names
    that route's methods only; a path served by several routes (``GET``, ``PATCH`` and
    ``DELETE`` of one client) needs them all. Each method is asked of the router the way a
    request with it would be routed.
    """
    routes = request.app.router.routes
    return [
        method
        for method in _ORDER
        if any(r.matches({**request.scope, "method": method})[0] is Match.FULL for r in routes)
    ]


def log_keys(keyring: Keyring | None, bidx: BlindIndex | None, reasons: Sequence[str]) -> None:
    """The ``keys_loaded`` (or ``keys_unavailable``) event: versions and source, never keys."""
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
