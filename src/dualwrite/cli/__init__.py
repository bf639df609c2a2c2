"""The ``dualwrite`` command line.

Each command group lives in its own module (``db``, ``keys``, ``phase``, ``backfill``, ...),
imported explicitly at the bottom of this one. Expected failures print ``error: ...`` on
stderr and exit non-zero.

    $ dualwrite keys generate
    $ dualwrite db upgrade
    $ dualwrite phase show clients_pii
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="dualwrite",
    help="Encrypt PII/PHI columns of a live PostgreSQL table with zero downtime.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def main() -> None:
    """Console-script entry point."""
    app()


# Each command module registers itself on ``app`` when imported, so this order is the order of
# ``dualwrite --help`` (commands first, then groups). A missing or broken module is an import
# error. The modules import their heavy dependencies (SQLAlchemy, Alembic, uvicorn, the
# backfiller) inside the commands, so ``dualwrite --help`` stays quick.
# isort: off
from dualwrite.cli import db  # noqa: E402, F401
from dualwrite.cli import keys  # noqa: E402, F401
from dualwrite.cli import seed  # noqa: E402, F401
from dualwrite.cli import phase  # noqa: E402, F401
from dualwrite.cli import status  # noqa: E402, F401
from dualwrite.cli import serve  # noqa: E402, F401
from dualwrite.cli import backfill  # noqa: E402, F401
from dualwrite.cli import verify  # noqa: E402, F401
from dualwrite.cli import gate  # noqa: E402, F401
from dualwrite.cli import remanence  # noqa: E402, F401
from dualwrite.cli import fleet  # noqa: E402, F401
from dualwrite.cli import demo  # noqa: E402, F401
from dualwrite.cli import revision  # noqa: E402, F401

# isort: on
