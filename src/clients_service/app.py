"""The reference clients API: an app factory with a lifespan-managed engine, keys and watcher.

    $ dualwrite serve                      # uvicorn clients_service.app:create_app --factory

``create_app(settings)`` builds the app; its lifespan opens the engine (``DATABASE_URL`` or the
embedded PostgreSQL), loads the keyring and blind-index key, and starts a
:class:`~dualwrite.runtime.watcher.PhaseWatcher` (which heartbeats what this instance observes).

Routes: the clients CRUD (:mod:`clients_service.routes`), the dualwrite admin router
(:mod:`dualwrite.admin`, ``/admin/...``, its own ``ADMIN_TOKEN``), ``GET /metrics``
(Prometheus text format) and ``GET /healthz``.

Errors are one JSON line ``{"detail": "..."}`` (:class:`~dualwrite.admin.models.ErrorBody`, the
one error model the OpenAPI schema declares for every 4xx/5xx) without plaintext or key material:
400/422 bad input, 401 missing token, 404 unknown client or workspace, 405 with an ``Allow``
header listing every method of the path, 413 body larger than ``MAX_BODY_BYTES``, 500 a stored
value that does not decrypt (generic message), 503 when this instance cannot encrypt or decrypt
(no usable key), when a write fenced itself (:class:`~dualwrite.errors.FencedError`: the phase
snapshot it took is no longer current, the watcher has not refreshed within its liveness window,
or a live instance lacks this instance's current key) -- nothing is written then -- or when the
database is unreachable.

Logs: one ``http_request`` event per request (:class:`dualwrite.logs.RequestLog`: request id
from or to ``X-Request-ID``, route template, status, duration) and a ``keys_loaded`` event at
start; every secret of the settings is registered for redaction. ``GET /metrics`` is open unless
``METRICS_TOKEN`` is set.

An instance without a usable keyring still starts (it can serve a migration in ``plaintext``);
every request that needs a key is refused with 503 and the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException

from clients_service.repository import ClientsRepository
from clients_service.routes import Services, clients_router, require_metrics_token
from clients_service.schema import CLIENTS_PII
from clients_service.surface import Health, allowed_methods
from clients_service.tables import CLIENTS
from dualwrite.admin import (
    STATE_ATTRIBUTE,
    AdminContext,
    TokenSource,
    admin_router,
    error_responses,
)
from dualwrite.config import Settings, load_settings
from dualwrite.crypto import BlindIndex, FieldCipher, Keyring, load_keyring
from dualwrite.db import open_engine
from dualwrite.errors import (
    DecryptionError,
    DualwriteError,
    EncryptionUnavailableError,
    FencedError,
    UnknownMigrationError,
    is_connection_lost,
)
from dualwrite.logs import RequestLog, log_keys, register_settings_secrets
from dualwrite.metrics import Metrics
from dualwrite.phases import Behaviour
from dualwrite.runtime.codec import FieldCodec
from dualwrite.runtime.table import EncryptedTable
from dualwrite.runtime.watcher import PhaseWatcher

log = logging.getLogger("clients_service")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _keys(
    settings: Settings, metrics: Metrics
) -> tuple[Keyring | None, BlindIndex | None, str | None]:
    """The keyring and blind index, or ``None`` with the (key-free) reason."""
    keyring: Keyring | None = None
    bidx: BlindIndex | None = None
    reasons = []
    try:
        keyring = load_keyring(settings)
    except DualwriteError as exc:
        reasons.append(str(exc))
    try:
        bidx = BlindIndex.from_settings(settings)
    except DualwriteError as exc:
        reasons.append(str(exc))
    if keyring is not None:
        metrics.set_keyring(keyring)
    log_keys(keyring, bidx, reasons)
    return keyring, bidx, "; ".join(reasons) or None


def create_app(settings: Settings | None = None, *, metrics: Metrics | None = None) -> FastAPI:
    """The FastAPI app (``settings`` default: the environment; ``metrics`` default: a fresh
    private registry)."""
    settings = settings if settings is not None else load_settings()
    metrics = metrics if metrics is not None else Metrics()
    spec = CLIENTS_PII
    register_settings_secrets(settings)  # never in a log line of this process
    tokens = TokenSource(settings)  # a malformed token configuration fails here, at start

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        keyring, bidx, reason = _keys(settings, metrics)
        if reason:
            log.warning("encryption unavailable on this instance: %s", reason)
        async with open_engine(settings, hide_parameters=True) as engine:  # no PII in errors
            current = keyring.current.version if keyring else None
            watcher = PhaseWatcher(
                engine,
                settings,
                key_versions=frozenset(keyring.versions if keyring else ()),
                role="api",
                metrics=metrics,
                serves=(spec.name,),  # heartbeats clients_pii only
                current_key=current,
            )
            codec = FieldCodec(
                spec,
                FieldCipher(keyring) if keyring else None,
                bidx,
                metrics,
                events=watcher,
                shadow_sample_rate=settings.shadow_read_sample_rate,
                unavailable_reason=reason,
            )
            table = EncryptedTable(CLIENTS, codec, fence=watcher)
            tasks: set[asyncio.Task[None]] = set()

            def refresh_soon() -> None:  # the contract revision dropped the plaintext columns
                task = asyncio.get_running_loop().create_task(watcher.refresh())
                tasks.add(task)
                task.add_done_callback(tasks.discard)

            @contextlib.asynccontextmanager
            async def renew() -> AsyncIterator[Behaviour]:  # a fresh snapshot after a fence
                await watcher.refresh()
                with watcher.request(spec.name) as snap:
                    yield snap.behaviour

            repository = ClientsRepository(
                engine, table, on_columns_dropped=refresh_soon, renew=renew
            )
            app.state.services = Services(settings, watcher, repository, spec.name)
            app.state.watcher, app.state.codec, app.state.engine = watcher, codec, engine
            admin = AdminContext(
                engine, settings, keyring_current=current, watcher=watcher, tokens=tokens
            )
            setattr(app.state, STATE_ATTRIBUTE, admin)
            await watcher.start()
            probe = asyncio.get_running_loop().create_task(metrics.loop_lag.run())
            try:
                yield
            finally:
                probe.cancel()
                await watcher.stop()

    app = FastAPI(title="clients (dualwrite reference service)", lifespan=lifespan)
    app.state.settings, app.state.metrics = settings, metrics
    token = settings.api_token.get_secret_value() if settings.api_token else None
    app.state.api_token = token.encode() if token else None
    app.include_router(clients_router(token_required=token is not None))
    app.include_router(admin_router())
    _add_error_handlers(app)

    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(require_metrics_token)])
    async def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/healthz",
        operation_id="health",
        response_model=Health,
        responses=error_responses(500, 503),
    )
    async def healthz(request: Request) -> dict[str, Any]:
        """Liveness plus what this instance observes (phase, version, whether it can encrypt)."""
        state = request.app.state.watcher.state(spec.name)
        return {
            "status": "ok",
            "migration": spec.name,
            "phase": state.phase.value,
            "version": state.version,
            "can_encrypt": request.app.state.codec.can_encrypt,
        }

    app.add_middleware(RequestEdge, metrics=metrics, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(RequestLog)  # outermost: logs every answer, 413s included
    return app


def _one_line(exc: RequestValidationError) -> str:
    errors = exc.errors()
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
    msg = str(first.get("msg", "invalid input")).removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {msg}{more}"[:300]


def _add_error_handlers(app: FastAPI) -> None:
    async def invalid(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse({"detail": _one_line(exc)}, status_code=422)

    async def unavailable(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    async def unregistered(_: Request, exc: Exception) -> JSONResponse:
        detail = f"{exc}: run `dualwrite db upgrade` to register it"
        return JSONResponse({"detail": detail}, status_code=503)

    async def undecryptable(_: Request, exc: Exception) -> JSONResponse:
        # logged (table/column/version only) where it was counted; the answer stays generic
        return JSONResponse(
            {"detail": "internal error: a stored value could not be read"}, status_code=500
        )

    async def database(_: Request, exc: Exception) -> JSONResponse:
        if not is_connection_lost(exc):
            return await unexpected(_, exc)
        log.warning("database unavailable: %s", type(exc).__name__)
        return JSONResponse({"detail": "database unavailable, retry later"}, status_code=503)

    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error: %s", type(exc).__name__)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # every method of the path, not only the first route's
            headers["Allow"] = ", ".join(allowed_methods(request))
        if exc.status_code in (204, 304):
            return Response(status_code=exc.status_code, headers=headers)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(EncryptionUnavailableError, unavailable)
    app.add_exception_handler(FencedError, unavailable)
    app.add_exception_handler(UnknownMigrationError, unregistered)
    app.add_exception_handler(DecryptionError, undecryptable)
    app.add_exception_handler(DBAPIError, database)
    app.add_exception_handler(OSError, database)
    app.add_exception_handler(Exception, unexpected)


_NOT_LIVE = ("/admin", "/metrics", "/healthz", "unmatched")  # not the app's own requests


class RequestEdge:
    """Pure ASGI wrapper: refuses bodies over ``max_body_bytes`` (413) before the app reads
    them, and times every request into ``dualwrite_http_request_duration_seconds`` labelled by
    route template (``/workspaces/{workspace_id}/clients/{client_id}``), never the raw path.
    The heartbeat's recent latency also counts the event loop's current lag (the wait before
    the loop read the request, :class:`~dualwrite.metrics.latency.LoopLag`): what the latency
    budget compares is what a client waits, not only the time in the app.

    Installed with ``app.add_middleware``, so it runs inside Starlette's error middleware.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self._duration = metrics.http_duration
        self._recent = metrics.recent_latency
        self._lag = metrics.loop_lag

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, waited = time.perf_counter(), self._lag.seconds
        status_code = 500

        async def send_status(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)

        try:
            if scope["method"] in _BODY_METHODS:
                replay = await self._buffer(scope, receive)
                if replay is None:
                    await _too_large(send_status, self.max_body_bytes)
                    return
                receive = replay
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            took = time.perf_counter() - started
            self._duration.labels(
                method=scope["method"], route=template, status=str(status_code)
            ).observe(took)
            if not template.startswith(_NOT_LIVE):
                # the heartbeat's recent_p95_ms and, per route, recent_latency
                self._recent.add(took + waited, f"{scope['method']} {template}")

    async def _buffer(self, scope: Scope, receive: Receive) -> Receive | None:
        """Read the whole body (refusing early past the limit); ``None`` if too large."""
        limit = self.max_body_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    if int(value) > limit:
                        return None
                except ValueError:
                    pass
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, sent = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay


async def _too_large(send: Send, limit: int) -> None:
    body = b'{"detail":"request body larger than %d bytes"}' % limit
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
