"""``dualwrite serve`` — run the reference API (or any app factory) under uvicorn.

    $ dualwrite serve --port 8000 --workers 2

Logs: JSON lines on stderr unless it is a terminal (``LOG_FORMAT``), one ``http_request`` event
per request (the app's :class:`dualwrite.logs.RequestLog`), uvicorn's own lines in the same
format. A malformed key or admin-token setting fails before uvicorn starts, in one line.

The app is named by ``REFERENCE_APP`` (default ``clients_service.app:create_app``) and built by
uvicorn calling that factory, so dualwrite never imports the service itself. Each worker
process starts its own phase watcher, which heartbeats the phase it observes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Annotated

import typer

from dualwrite.cli import app
from dualwrite.cli._common import cli_errors, err_console, settings
from dualwrite.errors import ConfigError, MissingKeyError

if TYPE_CHECKING:
    from dualwrite.config import Settings


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
    uvicorn.run(
        target,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=level,
        log_config=uvicorn_log_config(s.log_format, level),  # applied in every worker
        access_log=False,
        proxy_headers=False,
    )
