"""The ``dualwrite`` command line.

Each command group lives in its own module (``db``, ``keys``, ``phase``, ``backfill``, ...)
and is registered here. Expected failures print ``error: ...`` on stderr and exit non-zero.

    $ dualwrite keys generate
    $ dualwrite db upgrade
    $ dualwrite phase show clients_pii
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="dualwrite",
    help="Encrypt PII/PHI columns of a live PostgreSQL table with zero downtime.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Command modules register themselves on ``app`` when imported. A module that is not there yet
# is skipped, so the CLI grows as the framework does.
_COMMAND_MODULES = (
    "db", "keys", "seed", "phase", "status", "serve", "backfill", "verify", "gate", "demo",
)

for _name in _COMMAND_MODULES:
    try:
        importlib.import_module(f"dualwrite.cli.{_name}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"dualwrite.cli.{_name}":
            raise


def main() -> None:
    """Console-script entry point."""
    app()
