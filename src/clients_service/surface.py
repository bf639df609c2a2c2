"""Pieces of the service's HTTP surface that are not routes: the health answer and the
``Allow`` header of a 405.

>>> order_methods({"PATCH", "GET", "HEAD", "DELETE"})
['GET', 'HEAD', 'PATCH', 'DELETE']
"""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import Request
from pydantic import BaseModel
from starlette.routing import Match

__all__ = ["Health", "allowed_methods", "order_methods"]

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
