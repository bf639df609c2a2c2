"""The route class of every admin route: authenticate first, bound the body, map every failure.

Authentication: ``Authorization: Bearer <ADMIN_TOKEN>``, compared with
:func:`hmac.compare_digest`, checked before the body is read or parsed. Without a token or with
a wrong one: 401 (with ``WWW-Authenticate: Bearer``); ``ADMIN_TOKEN`` not configured: 503.
"""

from __future__ import annotations

import hmac
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
from dualwrite.errors import DualwriteError, is_connection_lost

__all__ = ["ADMIN_MAX_BODY_BYTES", "admin_route_class"]

log = logging.getLogger("dualwrite.admin")

ADMIN_MAX_BODY_BYTES = 64 * 1024
"""Admin request bodies are small; anything larger is refused with 413 before parsing."""

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def _bearer_ok(request: Request, token: str) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


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


async def _guarded(
    request: Request, path: str, ctx: AdminContext | None, handler: Handler
) -> Response:
    if ctx is None:
        return error_response(503, "admin API not configured (no AdminContext)")
    token = ctx.settings.admin_token
    if token is None or not token.get_secret_value():
        return error_response(503, "admin API disabled: ADMIN_TOKEN is not set")
    if not _bearer_ok(request, token.get_secret_value()):
        return error_response(401, "missing or wrong bearer token")
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
