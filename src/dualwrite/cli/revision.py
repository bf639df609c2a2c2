"""``dualwrite revision NAME --table [SCHEMA.]TABLE --field COL[:search[=KIND]][:unique] ...``

Introspects the live table (``DATABASE_URL``) and writes the state-tables revision (if the
project has none), the expand revision and the contract revision into the project's own Alembic
versions folder (``./alembic.ini`` or ``ALEMBIC_CONFIG``), each calling
:mod:`dualwrite.schema.ops` with the spec frozen in the file::

    $ dualwrite revision patients_pii --table clinic.patients --scope clinic_id \\
        --field email:search=email:unique --field date_of_birth:search --field intake

Bad input is one line and exit 1, and nothing is written (see
:mod:`dualwrite.schema.revision`).
"""

from __future__ import annotations

from typing import Annotated

import typer

from dualwrite.cli import app
from dualwrite.cli._common import cli_errors, console, run_async, settings


@app.command("revision")
@cli_errors
def revision(
    name: Annotated[str, typer.Argument(help="migration name, e.g. patients_pii")],
    table: Annotated[str, typer.Option(help="[SCHEMA.]TABLE of the live table")],
    field: Annotated[
        list[str], typer.Option(help="COL[:search[=email|phone|text|exact]][:unique] (repeat)")
    ],
    scope: Annotated[
        str | None, typer.Option(help="tenant column leading the search/unique indexes")
    ] = None,
) -> None:
    """Write the state-tables, expand and contract revisions for encrypting TABLE's fields."""
    from dualwrite.db import open_engine
    from dualwrite.schema import migrate
    from dualwrite.schema.revision import generate, options

    options.check_name("migration name", name)  # before touching the database
    options.parse_table(table)
    for f in field:
        options.parse_field(f)
    s = settings()
    cfg = migrate.alembic_config()

    async def go() -> tuple[object, list[object]]:
        async with open_engine(s, pool_size=1) as engine:
            spec, files = await generate(engine, cfg, name, table, list(field), scope)
            return spec, list(files)

    spec, files = run_async(go())
    for path in files:
        console.print(f"wrote {path}", highlight=False)
    console.print(
        f"spec of {name} (declare the same in your app):\n{spec!r}", highlight=False, soft_wrap=True
    )
