"""``dualwrite seed --rows N [--workspaces W]`` — fill the reference table with fake plaintext."""

from __future__ import annotations

import importlib
import time
from typing import Annotated

import typer

from dualwrite.cli import app
from dualwrite.cli._common import cli_errors, console, run_async, settings
from dualwrite.errors import DualwriteError


@app.command("seed")
@cli_errors
def seed(
    rows: Annotated[int, typer.Option(min=1, max=50_000_000, help="rows to insert")] = 10_000,
    workspaces: Annotated[
        int, typer.Option(min=1, max=100_000, help="workspaces to spread over")
    ] = 10,
    random_seed: Annotated[int, typer.Option("--seed", help="deterministic generator seed")] = 1,
) -> None:
    """Insert realistic fake plaintext clients with COPY (reference service schema)."""
    from dualwrite.db import open_engine  # SQLAlchemy: imported here so --help stays quick

    s = settings()
    try:
        module = importlib.import_module(s.reference_seed_module)
    except ModuleNotFoundError:
        raise DualwriteError(f"seed module {s.reference_seed_module!r} is not installed") from None

    async def go() -> int:
        async with open_engine(s) as engine:
            n: int = await module.seed_clients(
                engine, rows, workspaces=workspaces, seed=random_seed
            )
            return n

    started = time.perf_counter()
    n = run_async(go())
    took = time.perf_counter() - started
    console.print(f"seeded {n} clients in {took:.1f}s ({n / max(took, 1e-9):,.0f} rows/s)")
