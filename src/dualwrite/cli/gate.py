"""``dualwrite gate`` — run the Locust latency gate against a live service, record the verdict.

    $ dualwrite gate --host http://127.0.0.1:8000
    $ dualwrite gate --locustfile my_load.py --threshold "GET /patients/{id}=50" \
        --threshold "GET /patients?limit=100=400"
    $ dualwrite gate --route "GET /patients/1=50" --route "GET /patients?limit=100=400"

``--route`` drives the generic load shipped with dualwrite (:data:`ROUTES_LOCUSTFILE`); without
``--locustfile`` or ``--route`` the reference service's own load runs (the ``LOCUSTFILE`` of
the module ``REFERENCE_GATE_THRESHOLDS`` names, or ``./loadtests/locustfile.py``).

Without ``--threshold`` the limits are the reference service's (``REFERENCE_GATE_THRESHOLDS``,
called with ``--single-p95-ms`` and ``--bulk-p95-ms``). The verdict fails on any p95 over its
limit, any failed request, or a thresholded endpoint never measured.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dualwrite.cli import app
from dualwrite.cli._common import cli_errors, console, echo_json, fail, run_async, settings
from dualwrite.config import Settings
from dualwrite.control import gate as gate_mod
from dualwrite.errors import DualwriteError


def reference_thresholds(s: Settings, single_p95_ms: float, bulk_p95_ms: float) -> dict[str, float]:
    """The limits of the reference service's endpoints, named by ``REFERENCE_GATE_THRESHOLDS``."""
    module, _, attr = s.reference_gate_thresholds.partition(":")
    try:
        make = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        raise DualwriteError(
            f"REFERENCE_GATE_THRESHOLDS {s.reference_gate_thresholds!r} is not importable: "
            "give your endpoints with --threshold NAME=MS"
        ) from None
    return dict(make(single_p95_ms, bulk_p95_ms))


def reference_locustfile(s: Settings) -> Path:
    """``./loadtests/locustfile.py`` if there is one, else the reference module's shipped
    ``LOCUSTFILE``."""
    local = Path("loadtests/locustfile.py")
    if local.is_file():
        return local
    module = s.reference_gate_thresholds.partition(":")[0]
    try:
        found = getattr(importlib.import_module(module), "LOCUSTFILE", None)
    except ImportError:
        found = None
    if found is None:
        raise DualwriteError("no locustfile: give --locustfile FILE or --route ROUTE=MS")
    return Path(found)


@app.command("gate")
@cli_errors
def gate(
    host: Annotated[
        str, typer.Option(help="base URL of the running service")
    ] = "http://127.0.0.1:8000",
    migration: Annotated[
        str | None,
        typer.Option(help="migration the verdict is recorded for (default: the only one)"),
    ] = None,
    users: Annotated[int, typer.Option(min=1, max=1000)] = 8,
    duration: Annotated[str, typer.Option(help="Locust run time, e.g. 20s, 2m")] = "20s",
    threshold: Annotated[
        list[str] | None,
        typer.Option(help="endpoint p95 limit, 'NAME=MS' (repeat; default: the reference's)"),
    ] = None,
    single_p95_ms: Annotated[float, typer.Option(help="reference single read p95 limit")] = 100.0,
    bulk_p95_ms: Annotated[float, typer.Option(help="reference bulk read p95 limit")] = 1000.0,
    locustfile: Annotated[Path | None, typer.Option(help="your own locustfile")] = None,
    route: Annotated[
        list[str] | None,
        typer.Option(help="'[METHOD] /PATH=MS' for the shipped generic load (repeat)"),
    ] = None,
    record: Annotated[bool, typer.Option(help="record the verdict for the phase guards")] = True,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Load the service with Locust; fail on any p95 over its limit or any failed request."""
    s = settings()
    env: dict[str, str] = {}
    if route:
        if locustfile is not None or threshold:
            raise DualwriteError("--route drives the shipped load: drop --locustfile/--threshold")
        routes, thresholds = gate_mod.parse_routes(route)
        locustfile, env["DUALWRITE_GATE_ROUTES"] = gate_mod.ROUTES_LOCUSTFILE, json.dumps(routes)
    else:
        thresholds = (
            gate_mod.parse_thresholds(threshold)
            if threshold
            else reference_thresholds(s, single_p95_ms, bulk_p95_ms)
        )
        locustfile = locustfile or reference_locustfile(s)
    token = s.api_token.get_secret_value() if s.api_token else None
    stats = gate_mod.run_locust(
        host, locustfile=locustfile, users=users, duration=duration, api_token=token, env=env
    )
    verdict = gate_mod.judge(stats, thresholds)

    async def save() -> str:
        from dualwrite.db import open_engine
        from dualwrite.state import registry, results  # SQLAlchemy: imported here

        async with open_engine(s) as engine, engine.begin() as conn:
            name = await registry.resolve_name(conn, migration)
            state = await registry.get_migration(conn, name)
            await results.record_gate(conn, name, state.phase, verdict.passed, verdict.summary())
            return state.phase.value

    phase = run_async(save()) if record else None
    if as_json:
        echo_json({**verdict.summary(), "phase": phase})
    else:
        table = Table(title=f"latency gate ({'recorded in ' + phase if phase else 'not recorded'})")
        for col in ("endpoint", "requests", "failures", "p95 ms", "limit ms"):
            table.add_column(col)
        for e in verdict.endpoints:
            limit = thresholds.get(e.name)
            table.add_row(
                e.name,
                str(e.requests),
                str(e.failures),
                f"{e.p95_ms:.0f}",
                f"{limit:.0f}" if limit else "-",
            )
        console.print(table)
    if not verdict.passed:
        raise fail("latency gate failed: " + "; ".join(verdict.failures))
    console.print("[green]latency gate passed[/green]")
