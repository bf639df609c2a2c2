"""``dualwrite serve`` — run the reference API (or any app factory) under uvicorn.

    $ dualwrite serve --port 8000 --workers 2

The app is named by ``REFERENCE_APP`` (default ``clients_service.app:create_app``) and built by
uvicorn calling that factory, so dualwrite never imports the service itself. Each worker
process starts its own phase watcher, which heartbeats the phase it observes.
"""

from __future__ import annotations

import importlib
from typing import Annotated

import typer

from dualwrite.cli import app
from dualwrite.cli._common import cli_errors, settings
from dualwrite.errors import ConfigError


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


@app.command("serve")
@cli_errors
def serve(
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="worker processes")] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Serve the reference clients API (REFERENCE_APP) with uvicorn."""
    import uvicorn

    target = settings().reference_app
    check_factory(target)
    uvicorn.run(
        target,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=False,
        proxy_headers=False,
    )
