"""One seed of the chaos run: writers of every kind, faults and phase moves at once, then the
phase converged and the model checked (see :mod:`tests.chaos.model`).

The seed decides the workspace, the start phase, every lane's sequence of operations, values and
pauses, the conductor's moves and the plan of faults; reruns of a seed replay those choices
(the interleaving of the lanes still depends on timing). Lanes:

* writer lanes, each repeatedly one of: create / change / read a client over HTTP through a
  random live API instance; a legacy writer's plaintext-only ``UPDATE`` or ``INSERT``; the same
  ``UPDATE`` under ``session_replication_role = replica``; ``COPY``; a primary-key change
  (raw SQL; half of them rewrite every non-NULL ciphertext under the new key, half do not and
  expect the trigger's refusal); a multi-row transaction committed or rolled back;
* the conductor: phase moves forward and back through ``change_phase`` (unforced), each after
  what an operator runs first (backfill + full verification, purge, decrypt), including
  ``contract -> finalized`` and back (:data:`tests.chaos.rig.FULL_PATH`);
* the fault lane: a backfill worker process SIGKILLed mid-run and resumed, an API instance
  SIGKILLed with writes in flight (then restarted), a PostgreSQL restart or every backend
  terminated (``pg_terminate_backend``).

A 503 is retried (it means nothing was written, e.g. a fenced instance or the database away);
any other 5xx is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
from sqlalchemy import text as sa_text

from dualwrite.phases import BackfillMode, Phase, backfill_mode_allowed
from tests.chaos import sql
from tests.chaos.model import FIELDS, Model, RowModel, Write, values_for
from tests.chaos.rig import Instance, Rig

OPTIONAL = tuple(f for f in FIELDS if f not in ("first_name", "last_name"))
OPS = {
    "api_create": 10, "api_patch": 26, "api_get": 10, "legacy_update": 8, "legacy_insert": 3,
    "replica_update": 6, "copy": 3, "pk_change": 4, "multi_tx": 5,
}  # fmt: skip
SQL_OPS = frozenset(
    {"legacy_update", "legacy_insert", "replica_update", "copy", "pk_change", "multi_tx"}
)
LEGACY_IN_CONTRACT = os.environ.get("DUALWRITE_CHAOS_LEGACY_IN_CONTRACT", "1") != "0"
"""Plaintext-only SQL writers keep writing in ``contract`` and ``finalized`` (default). A NULL
they write where the plaintext is already NULL cannot be told from no change, so the value
stays (the model expects that: :func:`tests.chaos.sql.unseen_clears`);
``DUALWRITE_CHAOS_LEGACY_IN_CONTRACT=0`` retires them from ``contract`` on."""
FAULTS = {"backfill_kill": 3, "api_kill": 3, "pg_restart": 2, "pg_terminate": 3}


@dataclass
class Result:
    seed: int
    attempted: int
    acknowledged: int
    present: int
    moves: int
    kills: int
    restarts: int
    seconds: float
    problems: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    refusals: dict[str, int] = field(default_factory=dict)
    history: list[str] = field(default_factory=list)
    final_phase: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.failures

    def figure(self) -> str:
        return (
            f"chaos: seed={self.seed} writes attempted={self.attempted} "
            f"acknowledged={self.acknowledged} present={self.present} moves={self.moves} "
            f"kills={self.kills} restarts={self.restarts} seconds={self.seconds:.1f}"
        )

    def render(self) -> str:
        lines = [self.figure(), f"  final phase {self.final_phase}; moves: {self.history}"]
        lines.append("  timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items()))
        lines += [f"  refused as expected: {k} x{v}" for k, v in sorted(self.refusals.items())]
        lines += [f"  FAILURE {f}" for f in self.failures[:20]]
        lines += [f"  VIOLATION {p}" for p in self.problems[:30]]
        more = len(self.problems) - 30
        if more > 0:
            lines.append(f"  ... and {more} more violations")
        return "\n".join(lines)


def seed_from_env(default: list[int]) -> list[int]:
    """``DUALWRITE_CHAOS_SEED=S`` (or ``S1,S2``) replaces the list of seeds."""
    given = os.environ.get("DUALWRITE_CHAOS_SEED", "").strip()
    return [int(s) for s in given.split(",")] if given else default


class Chaos:
    def __init__(self, rig: Rig, seed: int, seconds: float, process_faults: int | None) -> None:
        self.rig, self.seed, self.seconds = rig, seed, seconds
        self.rng = random.Random(seed)
        self.model = Model(str(uuid.UUID(int=self.rng.getrandbits(128), version=4)))
        self.stop = asyncio.Event()
        self.sql_open = asyncio.Event()
        self.sql_open.set()
        self.kills = 0
        self.moves = 0
        self.history: list[str] = []
        self.process_faults = process_faults
        self.restarts_before = rig.restarts

    # --- helpers ------------------------------------------------------------------------------

    @property
    def base(self) -> str:
        return f"/workspaces/{self.model.workspace}/clients"

    def instance(self, rng: random.Random) -> Instance | None:
        up = [i for i in self.rig.instances if i.up]
        return rng.choice(up) if up else None

    def checkout(self, rng: random.Random, n: int = 1) -> list[RowModel]:
        free = self.model.free_rows()
        if len(free) < n:
            return []
        rows = rng.sample(free, n)
        self.model.busy.update(r.key for r in rows)
        return rows

    def release(self, rows: list[RowModel]) -> None:
        for r in rows:
            self.model.busy.discard(r.key)

    def changes(self, rng: random.Random, seq: int, k: int | None = None) -> dict[str, Any]:
        fields = rng.sample(FIELDS, k or rng.randint(1, 3))
        nulls = frozenset(f for f in fields if f in OPTIONAL and rng.random() < 0.15)
        return values_for(seq, fields, nulls)

    # --- HTTP ---------------------------------------------------------------------------------

    async def http(
        self, inst: Instance, method: str, path: str, body: dict[str, Any] | None, w: Write | None
    ) -> httpx.Response | None:
        """Send; retry a 503 (nothing written) up to 20 times; ``None``: no answer (killed)."""
        for _ in range(20):
            try:
                r = await inst.http.request(method, path, json=body)
            except httpx.HTTPError:
                return None
            if r.status_code != 503:
                return r
            self.model.retried_503 += 1
            if w is not None and w.row is None:  # a create answered 503 must not exist: be lenient
                self.model.ghosts.append(dict(w.changes))
            await asyncio.sleep(0.1)
            if not inst.up:
                return None
        return r

    def unexpected(self, what: str, r: httpx.Response) -> None:
        self.model.fail(f"{what}: HTTP {r.status_code} {r.text[:200]}")

    async def api_create(self, rng: random.Random, inst: Instance | None = None) -> None:
        inst = inst or self.instance(rng)
        if inst is None:
            return
        seq = self.model.next_seq()
        nulls = frozenset(f for f in OPTIONAL if rng.random() < 0.2)
        values = values_for(seq, FIELDS, nulls)
        w = self.model.write("api_create", None, values)
        r = await self.http(inst, "POST", self.base, values, w)
        if r is None:
            self.model.unknown(w)
        elif r.status_code == 201:
            got = r.json()
            self.model.ack(w, got["id"])
            if any(got[f] != v for f, v in values.items()):
                self.model.fail(f"create w{w.seq} answered other values than it was sent")
        else:
            self.model.unknown(w)
            self.unexpected(f"create w{w.seq} via {inst.name}", r)

    async def api_patch(
        self, rng: random.Random, inst: Instance | None = None, rows: list[RowModel] | None = None
    ) -> None:
        inst = inst or self.instance(rng)
        rows = rows if rows is not None else self.checkout(rng)
        if inst is None or not rows:
            self.release(rows or [])
            return
        row = rows[0]
        try:
            w = self.model.write("api_patch", row, self.changes(rng, self.model.next_seq()))
            r = await self.http(inst, "PATCH", f"{self.base}/{row.key}", w.changes, w)
            if r is None:
                self.model.unknown(w)
            elif r.status_code == 200:
                self.model.ack(w)
            else:
                self.model.unknown(w)
                self.unexpected(f"patch w{w.seq} of {row.key} via {inst.name}", r)
        finally:
            self.release(rows)

    async def api_get(self, rng: random.Random) -> None:
        inst, rows = self.instance(rng), self.checkout(rng)
        if inst is None or not rows:
            self.release(rows)
            return
        row = rows[0]
        try:
            r = await self.http(inst, "GET", f"{self.base}/{row.key}", None, None)
            if r is None:
                return
            if r.status_code != 200:
                self.unexpected(f"read of {row.key} via {inst.name}", r)
                return
            got = r.json()
            wrong = {f: got[f] for f in FIELDS if got[f] != row.values[f]}
            if wrong:
                async with self.rig.engine.connect() as conn:
                    now = await conn.scalar(sa_text(sql.SEEN_SQL))
                self.model.fail(
                    f"read of {row.key} via {inst.name} answered {wrong}, expected "
                    f"{ {f: row.values[f] for f in wrong} } (written by {sorted(row.tags)}; "
                    f"database now {now})"
                )
        finally:
            self.release(rows)

    # --- SQL writers --------------------------------------------------------------------------

    def sql_outcome(self, what: str, outcome: str) -> bool:
        """True when committed; counts refusals, records failures."""
        if outcome == "committed":
            return True
        if outcome == "aborted":
            return False
        if outcome.startswith("refused:"):
            self.model.refused_as_expected(f"{what}: {outcome.split(':', 2)[2][:70]}")
            return False
        self.model.fail(f"{what}: {outcome}")
        return False

    async def sql_update(self, rng: random.Random, replica: bool) -> None:
        rows = self.checkout(rng)
        if not rows:
            return
        row, kind = rows[0], "replica_update" if replica else "legacy_update"
        try:
            w = self.model.write(kind, row, self.changes(rng, self.model.next_seq()))
            sets = ", ".join(f"{f} = ${n}" for n, f in enumerate(w.changes, 2))
            stmt = f"UPDATE clients SET {sets}, updated_at = now() WHERE id = $1"

            kept: set[str] = set()

            async def body(conn: asyncpg.Connection) -> None:
                kept.update(await sql.unseen_clears(conn, uuid.UUID(row.key), w.changes))
                done = await conn.execute(stmt, uuid.UUID(row.key), *w.changes.values())
                if done != "UPDATE 1":
                    self.model.fail(f"{kind} w{w.seq} of {row.key}: {done}")

            seen: list[str] = []
            outcome = await sql.transaction(self.rig.engine, body, replica=replica, seen=seen)
            if self.sql_outcome(kind, outcome):
                self.ack_sql(w, kept, seen)
        finally:
            self.release(rows)

    def ack_sql(self, w: Write, kept: set[str], seen: list[str]) -> None:
        """Acknowledge a plaintext-only write; a clear of a plaintext that was NULL already
        (:func:`tests.chaos.sql.unseen_clears`) leaves the field's value as it was."""
        for f in kept:
            del w.changes[f]
        if kept:
            self.model.refused_as_expected("legacy clear of a plaintext already NULL: kept")
        self.model.ack(w, seen=seen[0] if seen else None)

    async def legacy_insert(self, rng: random.Random, n: int = 1, copy: bool = False) -> None:
        kind = "copy" if copy else "legacy_insert"
        writes = []
        for _ in range(n):
            seq = self.model.next_seq()
            values = values_for(seq, FIELDS, frozenset(f for f in OPTIONAL if rng.random() < 0.2))
            writes.append((str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                           self.model.write(kind, None, values)))  # fmt: skip
        ws = uuid.UUID(self.model.workspace)
        cols = ["id", "workspace_id", *FIELDS]

        async def body(conn: asyncpg.Connection) -> None:
            records = [(uuid.UUID(k), ws, *(w.changes[f] for f in FIELDS)) for k, w in writes]
            if copy:
                await conn.copy_records_to_table("clients", records=records, columns=cols)
            else:
                marks = ", ".join(f"${i}" for i in range(1, len(cols) + 1))
                await conn.executemany(
                    f"INSERT INTO clients ({', '.join(cols)}) VALUES ({marks})", records
                )

        seen: list[str] = []
        if self.sql_outcome(kind, await sql.transaction(self.rig.engine, body, seen=seen)):
            for k, w in writes:
                self.model.ack(w, k, seen[0] if seen else None)

    async def pk_change(self, rng: random.Random) -> None:
        rows = self.checkout(rng)
        if not rows:
            return
        row, rewrite = rows[0], rng.random() < 0.5
        new_key = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        kind = "pk_change_rewrite" if rewrite else "pk_change"
        w = self.model.write(kind, row, {})
        cipher, spec = self.rig.cipher, self.rig.table.spec

        async def body(conn: asyncpg.Connection) -> None:
            sets = ["id = $2"]
            args: list[Any] = [uuid.UUID(row.key), uuid.UUID(new_key)]
            if rewrite:
                cts = [spec.field(f).ciphertext_column for f in FIELDS]
                now = await conn.fetchrow(
                    f"SELECT {', '.join(cts)} FROM clients WHERE id = $1 FOR UPDATE", args[0]
                )
                for f, col in zip(FIELDS, cts, strict=True):
                    if now[col] is not None:
                        args.append(cipher.encrypt(
                            row.values[f], table=spec.aad_table, column=f, row_key=new_key
                        ))  # fmt: skip
                        sets.append(f"{col} = ${len(args)}")
            done = await conn.execute(f"UPDATE clients SET {', '.join(sets)} WHERE id = $1", *args)
            if done != "UPDATE 1":
                self.model.fail(f"{kind} of {row.key}: {done}")

        try:
            outcome = await sql.transaction(self.rig.engine, body)
            if outcome.startswith("refused:23514") and rewrite:
                self.model.fail(f"{kind} of {row.key} (every ciphertext rewritten) refused: "
                                f"{outcome}")  # fmt: skip
            elif self.sql_outcome(kind, outcome):
                self.model.ack(w)
                row.tags.add(kind)
                self.model.busy.discard(row.key)
                self.model.rekey(row, new_key)
        finally:
            self.release(rows)

    async def multi_tx(self, rng: random.Random) -> None:
        rows = self.checkout(rng, rng.randint(2, 4))
        if not rows:
            return
        commit = rng.random() < 0.75
        try:
            writes = [
                self.model.write("multi_tx", r, self.changes(rng, self.model.next_seq()))
                for r in rows
            ]

            kept: dict[int, set[str]] = {}

            async def body(conn: asyncpg.Connection) -> None:
                for w in writes:
                    assert w.row is not None
                    key = uuid.UUID(w.row.key)
                    kept[w.seq] = await sql.unseen_clears(conn, key, w.changes)
                    sets = ", ".join(f"{f} = ${n}" for n, f in enumerate(w.changes, 2))
                    await conn.execute(
                        f"UPDATE clients SET {sets} WHERE id = $1",
                        uuid.UUID(w.row.key), *w.changes.values(),
                    )  # fmt: skip
                if not commit:
                    raise sql.Rollback

            seen: list[str] = []
            outcome = await sql.transaction(self.rig.engine, body, seen=seen)
            if self.sql_outcome("multi_tx", outcome):
                for w in writes:
                    self.ack_sql(w, kept.get(w.seq, set()), seen)
        finally:
            self.release(rows)

    # --- lanes --------------------------------------------------------------------------------

    async def writer(self, lane: int) -> None:
        rng = random.Random(f"{self.seed}-writer-{lane}")
        names, weights = list(OPS), list(OPS.values())
        while not self.stop.is_set():
            op = rng.choices(names, weights)[0]
            if op in SQL_OPS:
                await self.sql_open.wait()
                retired = self.model.phase in ("contract", "finalized")
                if retired and not LEGACY_IN_CONTRACT:
                    op = "api_patch"
            match op:
                case "api_create":
                    await self.api_create(rng)
                case "api_patch":
                    await self.api_patch(rng)
                case "api_get":
                    await self.api_get(rng)
                case "legacy_update":
                    await self.sql_update(rng, replica=False)
                case "replica_update":
                    await self.sql_update(rng, replica=True)
                case "legacy_insert":
                    await self.legacy_insert(rng)
                case "copy":
                    await self.legacy_insert(rng, n=rng.randint(2, 5), copy=True)
                case "pk_change":
                    await self.pk_change(rng)
                case "multi_tx":
                    await self.multi_tx(rng)
            await asyncio.sleep(rng.uniform(0, 0.01))

    async def conductor(self) -> None:
        rng = random.Random(f"{self.seed}-conductor")
        while not self.stop.is_set():
            await asyncio.sleep(rng.uniform(0.2, 0.6))
            if self.stop.is_set():
                return
            try:
                await self.one_move(rng)
            except Exception as exc:  # a fault hit the operator's own session; go on
                self.history.append(f"move interrupted ({type(exc).__name__}: {str(exc)[:90]})")
            finally:
                self.sql_open.set()

    async def one_move(self, rng: random.Random) -> None:
        p = await self.rig.phase()
        order = list(Phase)
        forward = order[p.index + 1] if p.index + 1 < len(order) else None
        back = order[p.index - 1] if p.index > 0 else None
        if forward is Phase.FINALIZED and not self.rig.finalize_allowed:
            forward = None
        if p is Phase.FINALIZED:
            forward = None
        target = forward if (forward and (back is None or rng.random() < 0.6)) else back
        if target is None:
            return
        prepared = ((Phase.BACKFILL, Phase.READ_SWITCH), (Phase.CONTRACT, Phase.FINALIZED))
        if (p, target) in prepared and rng.random() < 0.7:
            self.sql_open.clear()  # the other writers pause (retired) while the operator works
        outcome = await self.rig.step(target, tries=3)
        reads_refused = "no_plaintext_fallbacks" in outcome or "no_shadow_mismatches" in outcome
        if (p, target) == (Phase.READ_SWITCH, Phase.CONTRACT) and reads_refused:
            # legacy writers made reads fall back: retire them, switch afresh, contract
            self.history.append(f"{p}->{target}:{outcome[:60]}")
            self.sql_open.clear()
            for p, target in zip(
                (Phase.READ_SWITCH, Phase.BACKFILL, Phase.READ_SWITCH),
                (Phase.BACKFILL, Phase.READ_SWITCH, Phase.CONTRACT),
                strict=True,
            ):
                outcome = await self.moved(p, target, await self.rig.step(target, tries=5))
                if outcome != "moved":
                    break
        else:
            await self.moved(p, target, outcome)
        self.sql_open.set()

    async def moved(self, p: Phase, target: Phase, outcome: str) -> str:
        if outcome == "moved":
            self.moves += 1
            self.model.phase = str(target)
        self.history.append(f"{p}->{target}:{outcome[:60]}")
        return outcome

    def fault_plan(self) -> list[tuple[float, str]]:
        rng = random.Random(f"{self.seed}-faults")
        n = max(2, round(self.seconds / 2.5))
        kinds: list[str] = []
        processes = 0
        for _ in range(n):
            k = rng.choices(list(FAULTS), list(FAULTS.values()))[0]
            if k in ("backfill_kill", "api_kill"):
                if self.process_faults is not None and processes >= self.process_faults:
                    k = "pg_terminate"
                processes += k != "pg_terminate"
            kinds.append(k)
        times = sorted(rng.uniform(0.1, 0.8) * self.seconds for _ in kinds)
        return list(zip(times, kinds, strict=True))

    async def faults(self, started: float) -> None:
        rng = random.Random(f"{self.seed}-fault-choices")
        for at, kind in self.fault_plan():
            delay = started + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.stop.is_set():
                return
            try:
                await getattr(self, kind)(rng)
            except Exception as exc:  # a fault hit the operator's own session; go on
                self.history.append(f"{kind} interrupted ({type(exc).__name__}: {str(exc)[:90]})")

    async def backfill_kill(self, rng: random.Random) -> None:
        p = await self.rig.phase()
        modes = [m for m in (BackfillMode.ENCRYPT, BackfillMode.PURGE, BackfillMode.DECRYPT)
                 if backfill_mode_allowed(p, m)]  # fmt: skip
        if not modes:
            self.history.append(f"backfill_kill skipped in {p}")
            return
        mode = rng.choice(modes)
        proc = self.rig.backfill_process(mode)
        await asyncio.sleep(rng.uniform(0.4, 1.2))
        exited = proc.popen.poll()
        proc.kill()
        self.kills += 1
        out = proc.output()
        if "Traceback" in out:
            self.model.fail(f"backfill {mode} process crashed: {out[-600:]}")
        resumed = await self.rig.backfill(mode)
        self.history.append(f"backfill {mode} killed (exited before: {exited}), resumed: {resumed}")

    async def api_kill(self, rng: random.Random) -> None:
        inst = self.instance(rng)
        if inst is None or sum(i.up for i in self.rig.instances) < 2:
            return
        inst.up = False  # the balancer stops routing new requests to it
        rows = [self.checkout(rng) for _ in range(3)]
        flying = [asyncio.create_task(self.api_patch(rng, inst, r)) for r in rows if r]
        flying.append(asyncio.create_task(self.api_create(rng, inst)))
        await asyncio.sleep(rng.uniform(0.0, 0.006))
        self.rig.kill_instance(inst)
        self.kills += 1
        await asyncio.gather(*flying)
        self.rig.restart_soon(inst)
        self.history.append(f"{inst.name} killed")

    async def pg_restart(self, rng: random.Random) -> None:
        await self.rig.restart_server(rng.uniform(0.1, 0.6))
        await self.rig.engine.dispose()
        self.history.append("postgres restarted")

    async def pg_terminate(self, rng: random.Random) -> None:
        n = await self.rig.terminate_backends()
        self.history.append(f"terminated {n} backends")

    # --- the run ------------------------------------------------------------------------------

    async def run(self) -> Result:
        t0 = time.monotonic()
        rig = self.rig
        rig.revive()  # a restart begun by an earlier seed goes on meanwhile
        starts = [Phase.DUAL_WRITE, Phase.BACKFILL, Phase.READ_SWITCH, Phase.CONTRACT]
        weights = [2, 3, 3, 2]
        if rig.finalize_allowed:
            starts.append(Phase.FINALIZED)
            weights.append(1)
        start = self.rng.choices(starts, weights)[0]
        try:
            await rig.converge(lambda p: p is start, timeout=20)
            self.history.append(f"start in {start}")
            self.model.phase = str(start)
        except AssertionError as exc:  # left so by an earlier seed (reported there)
            self.model.phase = str(await rig.phase())
            self.history.append(f"start in {self.model.phase}, not {start}: {exc}")
        timings = {"start": time.monotonic() - t0}
        await asyncio.gather(*(self.api_create(self.rng) for _ in range(8)))
        await self.legacy_insert(self.rng, n=8)
        started = time.monotonic()
        timings["seed rows"] = started - t0 - timings["start"]
        lanes = [asyncio.create_task(self.writer(n)) for n in range(3)]
        lanes.append(asyncio.create_task(self.conductor()))
        faults = asyncio.create_task(self.faults(started))
        await asyncio.sleep(self.seconds)
        self.stop.set()
        self.sql_open.set()
        faults.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await faults
        await asyncio.gather(*lanes)
        t1 = time.monotonic()
        timings["chaos"] = t1 - started
        # converge: a phase that keeps both sides, the backfill complete (a killed instance
        # may still be starting: the guards count it once it heartbeats)
        final = await rig.converge(lambda p: p in (Phase.BACKFILL, Phase.READ_SWITCH))
        await rig.backfill(BackfillMode.ENCRYPT)
        t2 = time.monotonic()
        timings["converge"] = t2 - t1
        read, bad = await rig.read_workspace(self.model.workspace, rig.read_behaviour(final))
        sides = await rig.both_sides(self.model.workspace)
        present, problems = self.model.check(read, bad, sides)
        if final is Phase.READ_SWITCH:
            problems += await self.rollback_possible()
        triggers = await rig.triggers()
        if problems or triggers.get("dualwrite_stale_guard") != "A":
            problems.append(f"(context) triggers on clients now: {triggers or 'none'}")
        self.history += rig.notes
        rig.notes.clear()
        timings["check"] = time.monotonic() - t2
        return Result(
            seed=self.seed, attempted=self.model.attempted,
            acknowledged=self.model.acknowledged, present=present, moves=self.moves,
            kills=self.kills, restarts=rig.restarts - self.restarts_before,
            seconds=time.monotonic() - t0, problems=problems, failures=self.model.failures,
            refusals=dict(self.model.expected_refusals), history=self.history,
            final_phase=str(final), timings=timings,
        )  # fmt: skip

    async def rollback_possible(self) -> list[str]:
        """Every step before ``finalized`` rolls back without loss: from ``read_switch`` the
        operator decrypts and verifies (:meth:`Rig.restore_plaintext`), moves to ``backfill``
        (reads from plaintext again), and every acknowledged write reads back from there."""
        outcome = await self.rig.step(Phase.BACKFILL, tries=20)
        self.history.append(f"rollback read_switch->backfill: {outcome[:60]}")
        if outcome != "moved":
            return [f"read_switch cannot move back to backfill: {outcome}"]
        read, bad = await self.rig.read_workspace(
            self.model.workspace, self.rig.read_behaviour(Phase.BACKFILL)
        )
        _, problems = self.model.check(read, bad, await self.rig.both_sides(self.model.workspace))
        return [f"after the rollback to backfill: {p}" for p in problems]


async def run_seed(
    rig: Rig, seed: int, seconds: float = 2.0, process_faults: int | None = 1
) -> Result:
    """One seed for ``seconds`` of chaos (``process_faults``: at most that many process kills,
    ``None``: no limit); prints its figure line."""
    result = await Chaos(rig, seed, seconds, process_faults).run()
    print(result.figure(), flush=True)
    return result
