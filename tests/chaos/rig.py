"""What every seed of a chaos run shares: one PostgreSQL server of its own (so it may be
restarted), one database, API instances of the clients service as ``dualwrite serve``
processes on loopback ports, warm spares for more processes, and the operator's side: phase
moves through :func:`dualwrite.control.transitions.change_phase`, in-process backfills and
verifications, and the final read through the framework's read path.

Each seed writes into a workspace of its own, so seeds share the table without sharing rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import URL, text
from sqlalchemy.ext.asyncio import AsyncEngine

from clients_service.schema import CLIENTS_PII
from clients_service.tables import CLIENTS
from dualwrite.backfill import Backfiller, BackfillOptions
from dualwrite.config import Settings
from dualwrite.control.transitions import change_phase
from dualwrite.crypto import BlindIndex, FieldCipher, load_keyring
from dualwrite.db import make_engine
from dualwrite.errors import (
    BackfillRefusedError,
    DecryptionError,
    GuardsFailedError,
    IllegalTransitionError,
    ModeNotAllowedError,
    PhaseError,
    SchemaStepError,
    TransitionConflictError,
)
from dualwrite.phases import BackfillMode, Behaviour, Phase, behaviour
from dualwrite.runtime.codec import FieldCodec
from dualwrite.runtime.table import EncryptedTable
from dualwrite.schema import inspector
from dualwrite.state import registry
from dualwrite.verify import VerificationReport, verify
from tests.chaos.model import FIELDS
from tests.chaos.procs import Proc, WarmPool
from tests.chaos.sql import SEEN_SQL
from tests.conftest import make_settings
from tests.harness.processes import environment
from tests.harness.server import own_server, restart
from tests.harness.service import free_port

MIGRATION = CLIENTS_PII.name
POLL = float(os.environ.get("DUALWRITE_CHAOS_POLL", "0.5"))
"""Every process's poll interval: its liveness window is 3x, its grace twice that plus its
longest request. Self-fencing is a lease: a process frozen mid-write for longer than its
grace is the one fault it cannot stop (README, "Guarantees"), so the interval stays well
above the stalls of a loaded two-core machine running a dozen processes."""
FULL_PATH = True
"""Walk ``contract -> finalized`` and back (``finalized -> contract -> read_switch``); main
allows these moves. Set ``DUALWRITE_CHAOS_FINALIZE=0`` to keep the run before finalize."""


@dataclass
class Instance:
    """One API instance (``dualwrite serve``) on a fixed port, killed and restarted at will."""

    name: str
    port: int
    proc: Proc | None = None
    up: bool = False
    http: httpx.AsyncClient = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", timeout=20)

    async def wait_ready(self, timeout: float = 90) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            assert self.proc is not None and self.proc.alive(), (
                f"{self.name} exited: {self.proc.output() if self.proc else ''}"
            )
            with contextlib.suppress(httpx.HTTPError):
                if (await self.http.get("/healthz", timeout=2)).status_code == 200:
                    self.up = True
                    return
            await asyncio.sleep(0.05)
        raise AssertionError(
            f"{self.name} not healthy in {timeout}s: {self.proc.output() if self.proc else ''}"
        )


class Rig:
    def __init__(
        self, url: URL, data_dir: Path, folder: Path, n_instances: int = 2, spares: int = 2
    ) -> None:
        self.url, self.data_dir, self.folder = url, data_dir, folder
        self.settings: Settings = make_settings(
            url, require_latency_gate=False, soak_seconds=0, poll_interval_seconds=POLL
        )
        self.engine: AsyncEngine = make_engine(url, pool_size=8)
        self.cipher = FieldCipher(load_keyring(self.settings))
        self.bidx = BlindIndex.from_settings(self.settings)
        self.table = EncryptedTable(CLIENTS, FieldCodec(CLIENTS_PII, self.cipher, self.bidx))
        self.env = environment(
            url, SOAK_SECONDS="0", REQUIRE_LATENCY_GATE="false", LOG_LEVEL="warning",
            POLL_INTERVAL_SECONDS=str(POLL), SHADOW_READ_SAMPLE_RATE="0.2",
        )  # fmt: skip
        self.env.pop("API_TOKEN", None)
        self.pool = WarmPool(self.env, folder, size=spares)
        self.instances = [Instance(f"chaos-api-{n}", free_port()) for n in range(n_instances)]
        self.finalize_allowed = FULL_PATH
        self.restarts = 0
        self.starting: dict[str, asyncio.Task[None]] = {}
        self.notes: list[str] = []  # what the rig found and did on the operator's side

    # --- processes ----------------------------------------------------------------------------

    async def start_instance(self, inst: Instance, attempts: int = 5) -> None:
        """Start ``inst`` as a supervisor would: a process that exits during its startup (the
        database restarting under it refuses connections) is started again."""
        for attempt in range(attempts):
            inst.proc = self.pool.take(
                ["serve", "--port", str(inst.port), "--log-level", "warning"],
                {"INSTANCE_ID": inst.name},
            )
            try:
                await inst.wait_ready()
                return
            except AssertionError:
                if inst.proc.alive() or attempt == attempts - 1:
                    raise
                await asyncio.sleep(0.5)

    def kill_instance(self, inst: Instance) -> None:
        inst.up = False
        if inst.proc is not None:
            inst.proc.kill()

    def restart_soon(self, inst: Instance) -> None:
        """Start ``inst`` again in the background (the run goes on meanwhile)."""
        self.starting[inst.name] = asyncio.create_task(self.start_instance(inst))

    def revive(self) -> None:
        """Restart (in the background) every instance that is down and not starting; a
        restart that failed raises here."""
        for inst in self.instances:
            task = self.starting.get(inst.name)
            if task is not None and task.done():
                del self.starting[inst.name]
                task.result()
            if inst.name not in self.starting and not (inst.up and inst.proc and inst.proc.alive()):
                self.restart_soon(inst)

    async def ensure_instances(self) -> None:
        """Every instance up: pending restarts awaited, dead ones started."""
        pending = list(self.starting.values())
        self.starting.clear()
        await asyncio.gather(*pending)
        down = [i for i in self.instances if not (i.up and i.proc and i.proc.alive())]
        await asyncio.gather(*(self.start_instance(i) for i in down))

    def backfill_process(self, mode: BackfillMode) -> Proc:
        return self.pool.take(
            ["backfill", "--migration", MIGRATION, "--mode", mode.value, "--batch-size", "20",
             "--max-rows-per-second", "300", "--json"]
        )  # fmt: skip

    # --- faults on the server -----------------------------------------------------------------

    async def restart_server(self, down_seconds: float) -> None:
        """Stop and start the server; a cancelled caller still waits until it is up again
        (the thread runs on regardless: nobody may go on against a server shutting down)."""
        job = asyncio.ensure_future(asyncio.to_thread(restart, self.data_dir, down_seconds))
        self.restarts += 1
        try:
            await asyncio.shield(job)
        except asyncio.CancelledError:
            await job
            await self.engine.dispose()  # its connections died with the old server
            raise

    async def terminate_backends(self) -> int:
        async with self.engine.connect() as conn:
            n = await conn.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        await self.engine.dispose()
        return int(n or 0)

    # --- the operator's side ------------------------------------------------------------------

    async def phase(self) -> Phase:
        async with self.engine.connect() as conn:
            return (await registry.get_migration(conn, MIGRATION)).phase

    async def move(self, target: Phase) -> str:
        """``moved``, or why not: ``refused:<guards>``, ``conflict``, ``schema:<error>``."""
        try:
            await change_phase(
                self.engine, MIGRATION, target, actor="chaos", reason="chaos run",
                force=False, settings=self.settings, keyring_current="v1",
            )  # fmt: skip
        except GuardsFailedError as exc:
            names = sorted(f.name for f in exc.failures)
            if "plaintext_purged" in names and await self.phase() is Phase.CONTRACT:
                self.notes.append(f"plaintext left in contract: {await self.plaintext_rows()}")
            return "refused:" + ",".join(names)
        except TransitionConflictError:
            return "conflict"
        except IllegalTransitionError:
            raise
        except (SchemaStepError, PhaseError) as exc:
            return f"schema:{type(exc).__name__}:{str(exc)[:160]}"
        return "moved"

    async def backfill(self, mode: BackfillMode) -> str:
        """One in-process backfill run to completion (resumes a killed run's checkpoint)."""
        opts = BackfillOptions(mode=mode, batch_size=200, once=True, retry_for_seconds=30)
        for _ in range(50):
            worker = Backfiller(self.engine, MIGRATION, self.cipher, self.bidx, opts)
            try:
                return (await worker.run()).stopped
            except ModeNotAllowedError:
                return "not_allowed"
            except BackfillRefusedError:  # decrypt: an instance still to observe the phase
                await asyncio.sleep(POLL)
        return "refused"

    async def prepare(self, current: Phase, target: Phase) -> None:
        """What an operator runs before a move so its guards can pass."""
        if (current, target) == (Phase.BACKFILL, Phase.READ_SWITCH):
            await self.backfill(BackfillMode.ENCRYPT)
            await self.verify_repairing("backfill", lambda r: not r.ok)
        elif (current, target) == (Phase.CONTRACT, Phase.FINALIZED):
            await self.backfill(BackfillMode.PURGE)
        elif (current, target) == (Phase.READ_SWITCH, Phase.BACKFILL):
            await self.restore_plaintext()

    async def restore_plaintext(self) -> None:
        """Before reads go back to plaintext (DESIGN §5, "Rollback"): decrypt once every
        instance observes ``read_switch`` (the backfiller waits for that), then a full
        verification that starts after it; ``--repair`` (plaintext rebuilt from ciphertext
        in this phase) and verify again when it finds a mismatch."""
        await self.backfill(BackfillMode.DECRYPT)
        await asyncio.sleep(2 * POLL)  # the fleet's observed_at lands before the verify starts
        # a missing ciphertext is fine here: the plaintext it was cleared for is newer
        await self.verify_repairing("read_switch", lambda r: bool(r.mismatched or r.undecryptable))

    async def verify_repairing(
        self, phase: str, needs_repair: Callable[[VerificationReport], bool]
    ) -> None:
        """A full verification; when ``needs_repair`` says so, ``--repair`` (in the phase's
        direction) and verify again, as an operator does."""
        report = await verify(self.engine, CLIENTS_PII, self.cipher, self.bidx, full=True)
        if needs_repair(report):
            fixed = await verify(
                self.engine, CLIENTS_PII, self.cipher, self.bidx, full=True, repair=True
            )
            self.notes.append(
                f"verify in {phase}: {report.mismatched} mismatched, {report.missing} missing, "
                f"{report.undecryptable} undecryptable rows; repaired {fixed.repaired}"
            )
            await verify(self.engine, CLIENTS_PII, self.cipher, self.bidx, full=True)

    async def step(self, target: Phase, tries: int = 20) -> str:
        """Prepare and move one phase, retrying while only fleet guards refuse (instances
        still to observe the version) or the move lost a race."""
        outcome = "not tried"
        for _ in range(tries):
            current = await self.phase()
            if current is target:
                return "moved"
            await self.prepare(current, target)
            outcome = await self.move(target)
            if outcome == "moved":
                return outcome
            guards = outcome.removeprefix("refused:").split(",")
            passing = (
                "fleet_", "plaintext_complete", "coverage_complete", "verification_passed",
                "plaintext_verified",
            )  # fmt: skip
            if outcome != "conflict" and not all(g.startswith(passing) for g in guards):
                return outcome
            await asyncio.sleep(POLL)
        return outcome

    async def converge(self, done: Callable[[Phase], bool], timeout: float = 60) -> Phase:
        """Walk the phase one step at a time until ``done(phase)``: forward from
        ``plaintext``/``dual_write``, back from ``contract``/``finalized``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        order = list(Phase)
        outcome = ""
        while True:
            p = await self.phase()
            if done(p):
                return p
            assert loop.time() < deadline, f"could not converge, still in {p}: {outcome}"
            wanted = [q for q in order if done(q)]
            nearest = min(wanted, key=lambda q: abs(q.index - p.index))
            nxt = order[p.index + (1 if nearest.index > p.index else -1)]
            outcome = await self.step(nxt)
            reads_refused = "no_plaintext_fallbacks" in outcome or "no_shadow_mismatches" in outcome
            if p is Phase.READ_SWITCH and reads_refused:
                outcome = await self.step(Phase.BACKFILL)  # a fresh switch, counted from zero
            if outcome != "moved":
                await asyncio.sleep(POLL)

    async def plaintext_rows(self, limit: int = 3) -> str:
        """A few rows still holding plaintext: key, which fields, the fence (diagnostics)."""
        cols = ", ".join(f"{f} IS NOT NULL AS {f}" for f in FIELDS)
        any_plain = " OR ".join(f"{f} IS NOT NULL" for f in FIELDS)
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    f"SELECT id, xmin::text AS x, {cols} FROM clients "
                    f"WHERE {any_plain} LIMIT {limit}"
                )
            )
            seen = await conn.scalar(text(SEEN_SQL))
        found = [(str(r.id), r.x, [f for f in FIELDS if getattr(r, f)]) for r in rows]
        return f"{seen}: {found}"

    async def triggers(self) -> dict[str, str]:
        """The dualwrite triggers on the table and how they are enabled (``A``: always,
        ``O``: origin only, ``D``: disabled)."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'clients'::regclass"
                    " AND NOT tgisinternal AND tgname LIKE 'dualwrite%'"
                )
            )
            return {
                str(r[0]): r[1].decode() if isinstance(r[1], bytes) else str(r[1]) for r in rows
            }

    # --- reading back -------------------------------------------------------------------------

    async def read_workspace(
        self, workspace: str, b: Behaviour
    ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        """Every row of ``workspace`` through :meth:`EncryptedTable.fetch` in behaviour ``b``;
        a row that cannot be read is listed with the reason instead."""
        ws = uuid.UUID(workspace)
        async with self.engine.connect() as conn:
            keys = [r[0] for r in await conn.execute(
                text("SELECT id FROM clients WHERE workspace_id = :ws"), {"ws": ws}
            )]  # fmt: skip
            read: dict[str, dict[str, Any]] = {}
            bad: dict[str, str] = {}
            try:
                rows = await self.table.fetch(conn, b, self.table.c.workspace_id == ws)
            except DecryptionError:
                rows = []
                for key in keys:
                    try:
                        rows += await self.table.fetch(conn, b, self.table.c.id == key)
                    except DecryptionError as exc:
                        bad[str(key)] = f"DecryptionError: {str(exc)[:120]}"
        for r in rows:
            read[str(r["id"])] = {f: r[f] for f in FIELDS}
        return read, bad

    async def both_sides(self, workspace: str) -> dict[str, dict[str, tuple[Any, Any]]]:
        """key -> field -> (plaintext or None, decrypted ciphertext, ``"!<why>"`` or None)."""
        ws = uuid.UUID(workspace)
        async with self.engine.connect() as conn:
            plain = await inspector.plaintext_columns_present(conn, CLIENTS_PII)
            cols = [CLIENTS_PII.field(f).ciphertext_column for f in FIELDS]
            if plain:
                cols += list(FIELDS)
            rows = (
                await conn.execute(
                    text(f"SELECT id, {', '.join(cols)} FROM clients WHERE workspace_id = :ws"),
                    {"ws": ws},
                )
            ).mappings()
            out: dict[str, dict[str, tuple[Any, Any]]] = {}
            for r in rows:
                key = str(r["id"])
                per: dict[str, tuple[Any, Any]] = {}
                for f in FIELDS:
                    ct = r[CLIENTS_PII.field(f).ciphertext_column]
                    dec: Any = None
                    if ct is not None:
                        try:
                            dec = self.cipher.decrypt(
                                bytes(ct), table=CLIENTS_PII.aad_table, column=f, row_key=key
                            )
                        except DecryptionError as exc:
                            dec = f"!{type(exc).__name__}"
                    per[f] = (r[f] if plain else None, dec)
                out[key] = per
        return out

    def read_behaviour(self, p: Phase) -> Behaviour:
        return behaviour(p)

    async def close(self) -> None:
        for task in self.starting.values():
            task.cancel()
        for inst in self.instances:
            if inst.proc is not None:
                inst.proc.terminate()
            await inst.http.aclose()
        self.pool.close()
        await self.engine.dispose()


@contextlib.asynccontextmanager
async def open_rig(n_instances: int = 2, spares: int = 2) -> AsyncIterator[Rig]:
    """A server of its own, the expanded database, the API instances started and healthy."""
    folder = Path(tempfile.mkdtemp(prefix="dualwrite-chaos-"))
    quiet = logging.getLogger("dualwrite")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # thousands of refused moves and retried batches
    try:
        async with own_server() as factory:
            assert factory.folder is not None
            url = await factory.create("0003")
            rig = Rig(url, factory.folder / "pg", folder, n_instances, spares)
            try:
                await rig.ensure_instances()
                yield rig
            finally:
                await rig.close()
    finally:
        quiet.setLevel(level)
        shutil.rmtree(folder, ignore_errors=True)
