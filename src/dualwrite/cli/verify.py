"""``dualwrite verify`` — decrypt every ciphertext and compare it with its plaintext.

    $ dualwrite verify --migration clients_pii --full
    $ dualwrite verify --migration clients_pii --sample 1000 --json
    $ dualwrite verify --migration clients_pii --full --repair

Prints the verification report (counts per field, key version prefixes, binary storage; never
a value) and records it for the guards. ``--repair`` rebuilds the side the phase does not read
from the side it reads (ciphertext from plaintext up to ``backfill``, plaintext from ciphertext
from ``read_switch`` on) and prints which. Exit status 1 when any problem is found (missing,
mismatched or undecryptable), 0 otherwise.
"""

from __future__ import annotations

from typing import Annotated

import typer

from dualwrite.cli import app
from dualwrite.cli._common import cli_errors, console, echo_json, run_async, settings
from dualwrite.errors import DualwriteError, MissingKeyError


@app.command("verify")
@cli_errors
def verify(
    migration: Annotated[
        str | None, typer.Option(help="migration name (default: the only registered one)")
    ] = None,
    full: Annotated[bool, typer.Option("--full", help="check every row")] = False,
    sample: Annotated[int | None, typer.Option(min=1, help="check N random rows")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object")] = False,
    repair: Annotated[
        bool, typer.Option("--repair", help="rebuild the side not read from the side read")
    ] = False,
) -> None:
    """Verify ciphertexts against plaintext; record the result; exit 1 on any problem."""
    if full == (sample is not None):
        raise DualwriteError("choose exactly one of --full or --sample N")
    # imported here, not at the top, so that ``dualwrite --help`` stays quick
    from dualwrite.crypto import BlindIndex, FieldCipher, load_keyring
    from dualwrite.db import open_engine
    from dualwrite.logs import log_keys
    from dualwrite.state import registry
    from dualwrite.verify import verify as run_verify

    s = settings()
    keyring = load_keyring(s)
    cipher = FieldCipher(keyring)
    try:
        bidx: BlindIndex | None = BlindIndex.from_settings(s)
    except MissingKeyError:
        bidx = None
    log_keys(keyring, bidx)

    async def go() -> dict[str, object]:
        async with open_engine(s, pool_size=2) as engine:
            async with engine.connect() as conn:
                name = await registry.resolve_name(conn, migration)
                spec = (await registry.get_migration(conn, name)).spec
            report = await run_verify(
                engine, spec, cipher, bidx, full=full, sample=sample, repair=repair
            )
            if not json_out:
                console.print(report.render(), highlight=False, soft_wrap=True)
            return report.as_dict()

    result = run_async(go())
    if json_out:
        echo_json(result)
    if not result["ok"]:
        raise typer.Exit(1)
