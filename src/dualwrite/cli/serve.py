"""``dualwrite serve`` — run the reference API (or any app factory) under uvicorn.

    $ dualwrite serve --port 8000 --workers 2

Logs: JSON lines on stderr unless it is a terminal (``LOG_FORMAT``), one ``http_request`` event
per request (the app's :class:`dualwrite.logs.RequestLog`), uvicorn's own lines in the same
format. A malformed key or admin-token setting fails before uvicorn starts, in one line.

The app is named by ``REFERENCE_APP`` (default ``clients_service.app:create_app``) and built by
uvicorn calling that factory, so dualwrite never imports the service itself. Each worker
process starts its own phase watcher, which heartbeats the phase it observes as an instance of
its own.

One worker runs uvicorn in this process. With ``--workers N`` (N > 1) this process becomes a
small supervisor (:mod:`dualwrite.serving`): it binds the socket once, starts N worker
processes that share it, restarts one that dies, and keeps ``/metrics`` right across them
(prometheus-client multiprocess mode in a private directory, or ``PROMETHEUS_MULTIPROC_DIR``
when set: every worker answers a scrape with the totals of all of them, and a dead worker is
marked dead). With ``INSTANCE_ID`` set, worker n heartbeats as ``<INSTANCE_ID>-<n>``, so a
restarted worker takes over its predecessor's heartbeat row.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dualwrite.cli import app
from dualwrite.cli._common import cli_errors, err_console, settings
from dualwrite.errors import ConfigError, MissingKeyError

if TYPE_CHECKING:
    from dualwrite.config import Settings

log = logging.getLogger("dualwrite.serving")


def check_factory(target: str) -> None:
    """Refuse a malformed or unimportable ``module:function`` before uvicorn starts."""
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute.isidentifier():
        raise ConfigError(f"REFERENCE_APP must look like 'package.module:factory' (got {target!r})")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"REFERENCE_APP module {module_name} cannot be imported ({exc.name} is missing)"
        ) from None
    if not callable(getattr(module, attribute, None)):
        raise ConfigError(f"REFERENCE_APP: {module_name} has no callable {attribute}")


def preflight_keys(s: Settings) -> None:
    """Fail start-up on malformed key settings (bad base64, wrong length, duplicate versions,
    current version missing). No key at all is allowed: the instance serves a migration still in
    ``plaintext`` and refuses writes that need encryption with 503 (a warning says so)."""
    from dualwrite.crypto import BlindIndex, load_keyring

    for load in (load_keyring, BlindIndex.from_settings):
        try:
            load(s)
        except MissingKeyError as exc:
            err_console.print(f"warning: {exc}; writes that need encryption will answer 503")


@app.command("serve")
@cli_errors
def serve(
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="worker processes")] = 1,
    log_level: Annotated[
        str | None, typer.Option(help="log level (default: LOG_LEVEL, info)")
    ] = None,
) -> None:
    """Serve the reference clients API (REFERENCE_APP) with uvicorn."""
    import uvicorn

    from dualwrite.admin import TokenSource
    from dualwrite.logs import uvicorn_log_config

    s = settings()
    level = log_level or s.log_level
    preflight_keys(s)
    TokenSource(s)  # a malformed ADMIN_TOKEN(S)(_FILE) fails here, in one line
    target = s.reference_app
    check_factory(target)
    if workers > 1:
        raise typer.Exit(_supervise(s, target, host, port, workers, level))
    uvicorn.run(
        target,
        factory=True,
        host=host,
        port=port,
        log_level=level,
        log_config=uvicorn_log_config(s.log_format, level),
        access_log=False,
        proxy_headers=False,
    )


def _listen(host: str, port: int) -> socket.socket:
    """The one listening socket every worker shares (one-line error when it cannot bind)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _supervise(s: Settings, target: str, host: str, port: int, workers: int, level: str) -> int:
    from dualwrite.logs import setup_logging
    from dualwrite.metrics import multiprocess
    from dualwrite.serving import Supervisor, WorkerSpec

    sock = _listen(host, port)
    given = multiprocess.active_dir()
    metrics_dir = given or Path(tempfile.mkdtemp(prefix="dualwrite-metrics-"))
    fd = sock.fileno()
    argv = [sys.executable, "-m", "dualwrite.serving.worker", "--fd", str(fd), "--app", target]
    specs = []
    for n in range(workers):
        env = dict(os.environ)
        if s.instance_id:
            env["INSTANCE_ID"] = f"{s.instance_id}-{n}"
        specs.append(WorkerSpec([*argv, "--log-level", level], env, (fd,), new_session=True))
    setup_logging(fmt=s.log_format, level=level)
    log.info("serving http://%s:%d with %d workers (metrics: %s)", host, port, workers, metrics_dir)
    supervisor = Supervisor(
        specs,
        metrics_dir=metrics_dir,
        restart=True,
        remove_metrics_dir=given is None,
        forward=lambda _sig: signal.SIGTERM,
    )
    try:
        return supervisor.run()
    finally:
        sock.close()
