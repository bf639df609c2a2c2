"""``dualwrite rewrite NAME`` and ``dualwrite scan NAME`` — plaintext left in the table's files.

    $ dualwrite rewrite clients_pii                          # pg_repack if it can run here
    $ dualwrite rewrite clients_pii --method vacuum-full --offline-rewrite-budget 30
    $ dualwrite scan clients_pii --json

``rewrite`` runs the table rewrite a finalize left pending (then scans); it exits 1 when the
rewrite is still pending. ``scan`` searches the heap, index and TOAST pages for the plaintext
of sampled rows (decrypted in memory): exit 0 when ``residual_plaintext`` is 0 and every
relation was read, 1 when plaintext was found, 2 when part of it could not be read
(``not_scanned`` says why; never a 0 it did not measure).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from dualwrite.cli import app
from dualwrite.cli._common import (
    cli_errors,
    console,
    echo_json,
    err_console,
    run_async,
    settings,
    show_progress,
)

if TYPE_CHECKING:
    from dualwrite.control.purge import PurgeReport
    from dualwrite.crypto import FieldCipher
    from dualwrite.remanence import ScanReport

MethodOption = Annotated[str, typer.Option("--method", help="auto | repack | vacuum-full | none")]
BudgetOption = Annotated[
    float | None,
    typer.Option(
        "--offline-rewrite-budget",
        min=0.001,
        help="seconds of ACCESS EXCLUSIVE you grant VACUUM FULL (refused over its estimate)",
    ),
]


def load_cipher() -> FieldCipher:
    from dualwrite.crypto import FieldCipher, load_keyring

    return FieldCipher(load_keyring(settings()))


def print_purge(report: PurgeReport) -> None:
    """The rewrite's outcome, then the scan's (if it ran)."""
    console.print(report.rewrite.render(), highlight=False, soft_wrap=True, markup=False)
    if report.scan is not None:
        console.print(report.scan.render(), highlight=False, soft_wrap=True, markup=False)


def scan_exit(report: ScanReport) -> int:
    if report.residual_plaintext:
        return 1
    return 0 if report.passed else 2


@app.command("rewrite")
@cli_errors
def rewrite(
    name: Annotated[str, typer.Argument(help="migration name, e.g. clients_pii")],
    method: MethodOption = "auto",
    budget: BudgetOption = None,
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object")] = False,
) -> None:
    """Rewrite a finalized table so the dropped plaintext leaves its files; then scan."""
    from dualwrite.control.purge import rewrite_and_scan
    from dualwrite.db import open_engine
    from dualwrite.remanence import RewriteOptions

    s = settings()
    show_progress()
    options = RewriteOptions(method, budget)
    cipher = load_cipher()

    async def go() -> PurgeReport:
        async with open_engine(s, pool_size=2) as engine:
            return await rewrite_and_scan(engine, name, s, cipher, options)

    report = run_async(go())
    if json_out:
        echo_json(report.as_dict())
    else:
        print_purge(report)
    if report.rewrite.status != "done":
        raise typer.Exit(1)
    if report.scan is not None and scan_exit(report.scan):
        raise typer.Exit(scan_exit(report.scan))


@app.command("scan")
@cli_errors
def scan(
    name: Annotated[str, typer.Argument(help="migration name, e.g. clients_pii")],
    sample: Annotated[int, typer.Option(min=1, help="rows whose plaintext is searched")] = 500,
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object")] = False,
) -> None:
    """Search the table's pages for the plaintext of sampled rows (decrypted in memory)."""
    from dualwrite.db import open_engine
    from dualwrite.errors import DualwriteError
    from dualwrite.phases import Phase
    from dualwrite.remanence import scan as run_scan
    from dualwrite.state import registry

    s = settings()
    show_progress()
    cipher = load_cipher()

    async def go() -> ScanReport:
        async with open_engine(s, pool_size=2) as engine:
            async with engine.connect() as conn:
                state = await registry.get_migration(conn, name)
            if state.phase not in (Phase.CONTRACT, Phase.FINALIZED):
                raise DualwriteError(
                    f"migration {name} is in phase {state.phase.value}: its plaintext columns "
                    "are live; the scan looks for what is left after the purge (contract, "
                    "finalized)"
                )
            return await run_scan(engine, state.spec, cipher, sample=sample)

    report = run_async(go())
    if json_out:
        echo_json(report.as_dict())
    else:
        console.print(report.render(), highlight=False, soft_wrap=True, markup=False)
    code = scan_exit(report)
    if code:
        err_console.print(
            "error: plaintext found in the table's files"
            if code == 1
            else "error: the scan could not read everything (see NOT SCANNED)"
        )
        raise typer.Exit(code)
