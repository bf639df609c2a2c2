"""The route class of every admin route: authenticate and authorise first, bound the body, map
every failure.

Order, before the body is read or parsed: no :class:`AdminContext` or no token configured: 503;
no ``Authorization: Bearer <token>`` or a token that is not configured (wrong, or revoked): 401
(with ``WWW-Authenticate: Bearer``); a ``read`` token on a route that changes something: 403.
Then a body over :data:`ADMIN_MAX_BODY_BYTES` is refused with 413. The token that passed is
left on ``request.state.admin_token`` (its name goes into the audit log).

``GET`` routes need the ``read`` scope (an ``operator`` token has it too); every other method
needs ``operator`` (see :mod:`dualwrite.admin.tokens`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from dualwrite.admin.context import AdminContext, context_of
from dualwrite.admin.errors import (
    dualwrite_error_response,
    error_response,
    validation_error_response,
)
from dualwrite.admin.tokens import OPERATOR, READ, AdminToken
from dualwrite.errors import ConfigError, DualwriteError, is_connection_lost
from dualwrite.logs import log_event

__all__ = ["ADMIN_MAX_BODY_BYTES", "admin_route_class", "required_scope"]

log = logging.getLogger("dualwrite.admin")

ADMIN_MAX_BODY_BYTES = 64 * 1024
"""Admin request bodies are small; anything larger is refused with 413 before parsing."""

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def required_scope(method: str) -> str:
    """``read`` for ``GET``/``HEAD``, ``operator`` for every method that changes something."""
    return READ if method.upper() in ("GET", "HEAD") else OPERATOR


def _presented(request: Request) -> str | None:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    given = given.strip()
    return given if scheme.lower() == "bearer" and given else None


async def _read_limited_body(request: Request) -> bytes | None:
    """The body, or ``None`` when it exceeds :data:`ADMIN_MAX_BODY_BYTES` (cached for FastAPI)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > ADMIN_MAX_BODY_BYTES:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > ADMIN_MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # Starlette's cache: FastAPI's body parsing reads it from here
    return body


def _authorise(request: Request, path: str, ctx: AdminContext) -> AdminToken | Response:
    """The token presented, or the 401/403/503 answer."""
    try:
        source = ctx.token_source()
        tokens = source.current()
    except ConfigError as exc:
        return error_response(503, f"admin API disabled: {exc}")
    if not source.configured:
        return error_response(
            503, "admin API disabled: ADMIN_TOKEN, ADMIN_TOKENS or ADMIN_TOKENS_FILE is not set"
        )
    given = _presented(request)
    token = tokens.match(given) if given is not None else None
    needed = required_scope(request.method)
    if token is None:
        log_event(log, "admin_token_refused", level=logging.WARNING, route=path, status=401,
                  method=request.method)  # fmt: skip
        return error_response(401, "missing or wrong bearer token")
    if not token.allows(needed):
        log_event(log, "admin_token_refused", level=logging.WARNING, route=path, status=403,
                  method=request.method, token=token.name)  # fmt: skip
        return error_response(
            403, f"token {token.name!r} is read-only: {request.method} needs an operator token"
        )
    return token


async def _guarded(
    request: Request, path: str, ctx: AdminContext | None, handler: Handler
) -> Response:
    if ctx is None:
        return error_response(503, "admin API not configured (no AdminContext)")
    token = _authorise(request, path, ctx)
    if isinstance(token, Response):
        return token
    request.state.admin_token = token
    if request.method in ("POST", "PATCH", "PUT") and await _read_limited_body(request) is None:
        return error_response(413, f"body larger than {ADMIN_MAX_BODY_BYTES} bytes")
    try:
        return await handler(request)
    except RequestValidationError as exc:
        return validation_error_response(exc)
    except DualwriteError as exc:
        return dualwrite_error_response(exc)
    except Exception as exc:
        if not is_connection_lost(exc):
            raise
        log.warning("admin %s %s: database error %s", request.method, path, type(exc).__name__)
        return error_response(503, f"database unavailable ({type(exc).__name__})")


def admin_route_class(given: AdminContext | None) -> type[APIRoute]:
    """An ``APIRoute`` subclass whose handlers run behind :func:`_guarded`."""

    class AdminRoute(APIRoute):
        def get_route_handler(self) -> Handler:
            handler, path = super().get_route_handler(), self.path

            async def guarded(request: Request) -> Response:
                return await _guarded(request, path, context_of(request, given), handler)

            return guarded

    return AdminRoute
