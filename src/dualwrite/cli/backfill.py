"""``dualwrite backfill`` — run the online backfiller (see :mod:`dualwrite.backfill`).

    $ dualwrite backfill --migration clients_pii --mode encrypt --once
    $ dualwrite backfill --migration clients_pii --mode encrypt --workers 2 --metrics-port 9200
    $ dualwrite backfill --migration clients_pii --mode purge --dry-run
    $ dualwrite backfill --mode encrypt --latency-target-ms 80   # hold while live p95 > 80 ms

While it runs, the backfill protects live latency (:mod:`dualwrite.backfill.latency`): it slows
down, then pauses, while the fleet's recent p95 of any route exceeds 1.5x that route's p95 at
the start (or ``--latency-target-ms``); ``dualwrite status`` and the progress lines say why.

Refusals (unknown migration, a phase that does not allow the mode, missing keys, a decrypt
in ``read_switch`` before every live instance observed it) print one line and exit 1 before any
row is touched. SIGTERM / SIGINT finish the batches in flight,
checkpoint and exit 0; the next start resumes from the checkpoint. ``--workers N`` starts N
worker processes (shards 0..N-1) that split the work with ``SKIP LOCKED`` claims; with
``--metrics-port`` the parent serves the totals of all of them (Prometheus multiprocess mode).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Annotated

import typer

from dualwrite.cli import app
from dualwrite.cli._common import cli_errors, echo_json, run_async, settings
from dualwrite.errors import DualwriteError, MissingKeyError
from dualwrite.phases import BackfillMode


@app.command("backfill")
@cli_errors
def backfill(
    migration: Annotated[
        str | None, typer.Option(help="migration name (default: the only registered one)")
    ] = None,
    mode: Annotated[str, typer.Option(help="encrypt | decrypt | rekey | purge")] = "encrypt",
    batch_size: Annotated[int | None, typer.Option(min=1, max=100_000)] = None,
    max_rows_per_second: Annotated[float | None, typer.Option(min=0)] = None,
    sleep_ratio: Annotated[float | None, typer.Option(min=0)] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="worker processes")] = 1,
    shard: Annotated[int, typer.Option(min=0, help="this worker's number (checkpoint key)")] = 0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="count, change nothing")] = False,
    metrics_port: Annotated[int | None, typer.Option(min=1, max=65535)] = None,
    once: Annotated[bool, typer.Option("--once", help="exit when nothing is left")] = False,
    json_lines: Annotated[
        bool, typer.Option("--json", help="JSON lines even on a terminal")
    ] = False,
    latency_factor: Annotated[
        float, typer.Option(min=0, help="live p95 budget = this x the fleet p95 at start (0: off)")
    ] = 1.5,
    latency_target_ms: Annotated[
        float, typer.Option(min=0, help="an absolute live p95 budget in ms (instead)")
    ] = 0.0,
    latency_prometheus_url: Annotated[
        str, typer.Option(help="instant-query URL giving the fleet p95 in ms (default: heartbeats)")
    ] = "",
    defer_indexes: Annotated[
        bool,
        typer.Option(
            "--defer-indexes",
            help="encrypt: drop the blind-index indexes for the pass, build them when it finishes",
        ),
    ] = False,
) -> None:
    """Convert rows of a live table (encrypt, decrypt for rollback, re-key, purge plaintext)."""
    try:
        parsed = BackfillMode.parse(mode)
    except ValueError as exc:
        raise DualwriteError(str(exc)) from None
    if workers > 1:
        raise typer.Exit(_spawn(workers, metrics_port))
    # imported here, not at the top, so that ``dualwrite --help`` stays quick
    from dualwrite.backfill import Backfiller, BackfillOptions
    from dualwrite.backfill.progress import JsonLinesProgress, default_sink
    from dualwrite.crypto import BlindIndex, FieldCipher, load_keyring
    from dualwrite.db import open_engine
    from dualwrite.logs import log_keys
    from dualwrite.metrics import Metrics

    s = settings()
    keyring = load_keyring(s)
    bidx: BlindIndex | None
    try:
        bidx = BlindIndex.from_settings(s)
    except MissingKeyError:
        bidx = None  # refused in preflight when the mode needs it
    log_keys(keyring, bidx)
    options = BackfillOptions(
        mode=parsed,
        batch_size=batch_size or s.backfill_batch_size,
        max_rows_per_second=(
            s.backfill_max_rows_per_second if max_rows_per_second is None else max_rows_per_second
        ),
        sleep_ratio=s.backfill_sleep_ratio if sleep_ratio is None else sleep_ratio,
        once=once,
        dry_run=dry_run,
        shard=shard,
        poll_seconds=s.poll_interval_seconds,
        max_active_backends=s.backfill_max_active_backends,
        max_replication_lag_seconds=s.backfill_max_replication_lag_seconds,
        latency_factor=latency_factor,
        latency_target_ms=latency_target_ms,
        latency_prometheus_url=latency_prometheus_url,
        defer_indexes=defer_indexes,
    )
    metrics = Metrics()
    metrics.set_keyring(keyring)
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, registry=metrics.registry)
    sink = JsonLinesProgress(sys.stdout) if json_lines else default_sink(sys.stdout)

    async def go() -> dict[str, object]:
        from dualwrite.state import registry

        async with open_engine(s, pool_size=2) as engine:
            async with engine.connect() as conn:
                name = await registry.resolve_name(conn, migration)
            worker = Backfiller(
                engine, name, FieldCipher(keyring), bidx, options,
                metrics=metrics, progress=sink,
            )  # fmt: skip
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, worker.request_stop)
            try:
                return (await worker.run()).as_dict()
            finally:
                sink.close()

    report = run_async(go())
    echo_json({"event": "report", **report})


def _without(argv: list[str], option: str) -> list[str]:
    """``argv`` less ``option VALUE`` / ``option=VALUE``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == option:
            skip = True
        elif not a.startswith(option + "="):
            out.append(a)
    return out


def _spawn(workers: int, metrics_port: int | None) -> int:
    """Run ``workers`` copies of this command as shards 0..N-1 under a supervisor that forwards
    SIGTERM/SIGINT; with ``metrics_port`` this process serves the totals of all of them
    (prometheus-client multiprocess mode; each worker is marked dead as it exits)."""
    import os
    import tempfile
    from pathlib import Path

    from dualwrite.metrics import multiprocess
    from dualwrite.serving import Supervisor, WorkerSpec

    args = _without(_without(sys.argv[1:], "--workers"), "--metrics-port")
    metrics_dir = Path(tempfile.mkdtemp(prefix="dualwrite-backfill-metrics-"))
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, registry=multiprocess.aggregate_registry(metrics_dir))
    env = dict(os.environ)
    specs = [
        WorkerSpec([sys.executable, "-m", "dualwrite.cli", *args, "--shard", str(n)], env)
        for n in range(workers)
    ]
    return Supervisor(specs, metrics_dir=metrics_dir, restart=False, grace_seconds=None).run()
