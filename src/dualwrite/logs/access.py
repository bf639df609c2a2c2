"""One ``http_request`` event per HTTP request, and the request id that ties its lines together.

:class:`RequestLog` is a pure ASGI middleware (install it outermost). It takes the caller's
``X-Request-ID`` when it looks like an id (1-128 of ``A-Z a-z 0-9 . _ : -``), otherwise makes
one; echoes it in the response's ``X-Request-ID``; binds it for every log line written while
the request runs; and logs, when the request ends::

    {"event": "http_request", "method": "GET", "route": "/workspaces/{workspace_id}/clients",
     "status": 200, "duration_ms": 3.1, "request_id": "5f0c...", ...}

Only the route *template* is logged — never the path (it holds ids) nor the query string (a
search holds an email address or a phone number).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from dualwrite.logs.events import log_event, request_id_var

__all__ = ["REQUEST_ID_HEADER", "RequestLog", "accept_request_id"]

REQUEST_ID_HEADER = "X-Request-ID"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
log = logging.getLogger("dualwrite.http")


def accept_request_id(given: bytes | None) -> str:
    """``given`` when it is a well-formed id, else a fresh one.

    >>> accept_request_id(b"req-42")
    'req-42'
    >>> len(accept_request_id(b"not ok\\n"))
    32
    """
    if given:
        try:
            text = given.decode("ascii")
        except UnicodeDecodeError:
            text = ""
        if _ID.fullmatch(text):
            return text
    return uuid.uuid4().hex


class RequestLog:
    """See the module docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope.get("headers", ()) if k == b"x-request-id"), None)
        rid = accept_request_id(given)
        token = request_id_var.set(rid)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                headers.append((b"x-request-id", rid.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            log_event(
                log,
                "http_request",
                level=logging.WARNING if status >= 500 else logging.INFO,
                message=f"{scope['method']} {route} {status}",
                method=scope["method"],
                route=route,
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
            )
            request_id_var.reset(token)
