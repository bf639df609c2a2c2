"""How a process learns the phase of every migration and tells the fleet what it saw.

A :class:`PhaseWatcher` keeps the latest observed :class:`~dualwrite.state.registry.MigrationState`
of every migration in memory, so request handlers ask it (``watcher.behaviour("clients_pii")``)
without touching the database. It learns about changes three ways:

* ``LISTEN dualwrite_phase`` on a dedicated asyncpg connection: a committed transition's
  ``NOTIFY`` wakes the poll loop at once, so a change is normally observed well within a second;
* polling every ``settings.poll_interval_seconds`` (default 2 s), which catches notifications
  lost while the listen connection was down, within one interval;
* :meth:`PhaseWatcher.refresh`, on demand.

Every poll interval -- and at once when it observes a new version, or when the last request of
an older version ends -- it heartbeats, for each migration it **serves**, the phase and version
it observed, its own poll interval, its longest recent request and the key versions it holds
(``dualwrite_instances``), and flushes the shadow-mismatch / fallback / decrypt-failure counts
recorded with :meth:`PhaseWatcher.count_read_event`. Transition guards read those heartbeats:
"every live instance observed ``dual_write``" is a fact about this table.

* **Served migrations**: the ones named in ``serves``, plus each one an
  :class:`~dualwrite.runtime.table.EncryptedTable` or ORM model is bound to with this watcher as
  its fence (:meth:`serve`). A watcher that was told of none heartbeats every migration.
* **Observed after drain**: a request acts under the snapshot it took with :meth:`request`;
  the version reported as observed is the oldest one a request still acts under
  (:mod:`dualwrite.runtime.inflight`), so "observed" means "nothing here writes under an older
  phase any more".
* **Self-fencing**: :meth:`fence` (the write path calls it in its transaction) refuses a write
  whose snapshot is stale, whose watcher has not refreshed within its liveness window, or that
  would seal with a key a live instance lacks (:mod:`dualwrite.runtime.fence`).

Guarantees:

* The observed state never goes backwards in version (a late poll cannot undo a NOTIFY).
* Losing the database never crashes the watcher: the loops log one line when an outage starts
  and one when it ends, keep the last known state, and retry every interval (the listen
  connection is re-opened by the poll loop); :meth:`start` retries a connection lost midway.
* :meth:`PhaseWatcher.stop` removes this instance's heartbeat, so it stops counting at once;
  an instance that dies without stopping stops being live after 3 of its poll intervals and
  blocks the fleet guards for its grace (``dualwrite fleet forget`` ends it).

>>> watcher = PhaseWatcher(engine, settings, key_versions=frozenset({"v1"}))   # doctest: +SKIP
>>> await watcher.start()                                                        # doctest: +SKIP
>>> watcher.behaviour("clients_pii").writes_ciphertext                           # doctest: +SKIP
False
>>> watcher.count_read_event("clients_pii", "read_fallback")                     # doctest: +SKIP
>>> await watcher.stop()                                                         # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from dualwrite.config import Settings
from dualwrite.errors import FencedError, UnknownMigrationError
from dualwrite.metrics import Metrics
from dualwrite.metrics.heartbeat import export_heartbeat_gauges
from dualwrite.phases import Behaviour, Phase, behaviour
from dualwrite.runtime import fence as fencing
from dualwrite.runtime.inflight import InFlight, RequestSnapshot, acting_version
from dualwrite.runtime.listen import Listener
from dualwrite.state import fleet, read_events, registry, versions
from dualwrite.state.registry import MigrationState

log = logging.getLogger("dualwrite.runtime.watcher")

READ_EVENT_KINDS = ("shadow_mismatch", "read_fallback", "decrypt_failure")
"""The kinds :meth:`PhaseWatcher.count_read_event` accepts (the ``dualwrite_read_events`` check)."""


def default_instance_id() -> str:
    """``host:pid:random`` — unique per process even when several share a host and pid space."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


class PhaseWatcher:
    """The in-memory, always-current view of every migration's phase for one process.

    ``role`` is recorded in the heartbeat (``api``, ``backfill``, ...). ``instance_id`` defaults
    to ``settings.instance_id`` or :func:`default_instance_id`. ``listen`` defaults to
    ``settings.listen_notify``; with ``False`` the watcher relies on polling alone.
    ``serves`` names the migrations it heartbeats (more are added by :meth:`serve`);
    ``current_key`` is the key version this process seals with (the key rotation rule).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        *,
        key_versions: frozenset[str],
        role: str = "api",
        instance_id: str | None = None,
        metrics: Metrics | None = None,
        listen: bool | None = None,
        serves: Iterable[str] | None = None,
        current_key: str | None = None,
    ) -> None:
        self.engine, self.settings, self.role, self.metrics = engine, settings, role, metrics
        self.key_versions = frozenset(key_versions)
        self.instance_id: str = instance_id or settings.instance_id or default_instance_id()
        self.listen = settings.listen_notify if listen is None else listen
        self.poll_interval = float(settings.poll_interval_seconds)
        self._host, self._pid = socket.gethostname(), os.getpid()
        self._states: dict[str, MigrationState] = {}
        self._pending: Counter[tuple[str, int, str]] = Counter()
        self._changed = asyncio.Condition()
        self._wake, self._tasks = asyncio.Event(), list[asyncio.Task[None]]()
        self._listener = Listener(engine, self._wake, self._outage, max(5.0, self.poll_interval))
        self._failing: dict[str, bool] = {}  # loop -> failing now
        self._started = False
        self._serves: set[str] | None = set(serves) if serves is not None else None
        self.current_key = current_key
        self._inflight = InFlight(on_drained=self._drained)
        self._beat = asyncio.Event()  # heartbeat now
        self._refreshed_at: float | None = None  # monotonic, last successful refresh
        self._key_refusal: dict[str, str] = {}

    @property
    def liveness_window(self) -> float:  # how long the fleet counts it live without a beat
        return 3.0 * self.poll_interval

    def serve(self, migration: str) -> None:
        """Heartbeat ``migration`` (from now on): this process reads or writes its table."""
        if self._serves is None:
            self._serves = set()
        if migration not in self._serves:
            self._serves.add(migration)
            self._beat.set()

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Load every migration's state (raises if the database is unreachable now; a
        connection lost midway is retried), heartbeat once, then run the loops."""
        for attempt in range(4):
            try:
                async with self.engine.connect() as conn:
                    await versions.require_state_version(conn)
                await self.refresh()
                await self._heartbeat_once()
                break
            except DBAPIError as exc:  # a restart or a terminated backend, not "unreachable"
                if not exc.connection_invalidated or attempt == 3:
                    raise
                await asyncio.sleep(0.2 * (attempt + 1))
        if self.listen:
            await self._listener.ensure(quiet=True)
        self._started = True
        self._tasks = [
            asyncio.create_task(self._poll_loop(), name=f"dualwrite-poll-{self.instance_id}"),
            asyncio.create_task(
                self._heartbeat_loop(), name=f"dualwrite-heartbeat-{self.instance_id}"
            ),
        ]

    async def stop(self) -> None:
        """Stop the loops, flush pending read events, close LISTEN, forget this instance."""
        self._started = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        await self._listener.close()
        try:
            async with asyncio.timeout(max(2.0, self.poll_interval)):
                async with self.engine.begin() as conn:
                    await self._flush_read_events(conn)
                    await fleet.remove_instance(conn, self.instance_id)
        except Exception as exc:  # the database may be gone at shutdown; heartbeats then expire
            log.warning(
                "could not remove instance %s at stop: %s", self.instance_id, _one_line(exc)
            )

    # --- reading the observed state -------------------------------------------------------

    def state(self, name: str) -> MigrationState:
        """The latest observed state of migration ``name``."""
        try:
            return self._states[name]
        except KeyError:
            raise UnknownMigrationError(f"unknown migration {name!r}") from None

    def behaviour(self, name: str) -> Behaviour:
        """What the observed phase of ``name`` means (writes, reads, backfill modes)."""
        return behaviour(self.state(name).phase)

    def states(self) -> dict[str, MigrationState]:
        return dict(self._states)  # a copy of every observed state, by migration name

    def request(self, name: str) -> contextlib.AbstractContextManager[RequestSnapshot]:
        """``with watcher.request("clients_pii") as snap:`` -- one request's phase snapshot
        (``snap.behaviour``), counted in flight until the block ends; ``FencedError`` when
        the last refresh is older than the liveness window (the fleet may have moved on)."""
        if self._started:
            self._check_fresh(name, "request")
        return self._inflight.request(self.state(name))

    def in_flight(self, name: str) -> dict[int, int]:
        return self._inflight.in_flight(name)  # requests in flight by acting version

    # --- fencing (see dualwrite.runtime.fence) ---------------------------------------------

    def _check_fresh(self, name: str, what: str = "write") -> None:
        age = None if self._refreshed_at is None else time.monotonic() - self._refreshed_at
        fencing.check_fresh(name, age, self.liveness_window, what)

    def _fence_local(self, name: str, b: Behaviour) -> tuple[int, Phase]:
        self._check_fresh(name)
        refusal = self._key_refusal.get(name)
        if refusal is not None and b.writes_ciphertext:
            raise FencedError(refusal)
        acting = acting_version(name)
        return (self.state(name).version if acting is None else acting), b.phase

    async def fence(self, conn: AsyncConnection, name: str, b: Behaviour) -> None:
        """Raise :class:`~dualwrite.errors.FencedError` unless a write under ``b`` may run in
        ``conn``'s transaction (one ``SELECT`` of the state row)."""
        acting, phase = self._fence_local(name, b)
        row = (await conn.execute(text(fencing.STATE_ROW_SQL), {"n": name})).one()
        fencing.check_current(name, acting, phase, Phase(row.phase), int(row.version))

    def fence_sync(self, conn: Any, name: str, b: Behaviour) -> None:
        """:meth:`fence` on a synchronous connection (the ORM flush)."""
        acting, phase = self._fence_local(name, b)
        row = conn.execute(text(fencing.STATE_ROW_SQL), {"n": name}).one()
        fencing.check_current(name, acting, phase, Phase(row.phase), int(row.version))

    def _drained(self, name: str, version: int) -> None:
        state = self._states.get(name)
        if state is not None and version < state.version:
            self._beat.set()  # it may now report the newer version as observed

    async def _load_fleet_keys(self, conn: AsyncConnection, names: list[str]) -> None:
        """Which served migration has a live instance lacking ``current_key`` (each poll)."""
        if self.current_key is not None:
            self._key_refusal = await fencing.fleet_key_refusals(
                conn, self._served_names(names), self.current_key, self.instance_id,
                self.poll_interval,
            )  # fmt: skip

    def _served_names(self, names: list[str] | None = None) -> list[str]:
        names = list(self._states) if names is None else names
        return names if self._serves is None else [n for n in names if n in self._serves]

    async def refresh(self) -> None:
        """Reload every migration now; a state only replaces one with a lower version."""
        async with self.engine.connect() as conn:
            loaded = await registry.list_migrations(conn)
            await self._load_fleet_keys(conn, [m.name for m in loaded])
        self._refreshed_at = time.monotonic()
        changed = False
        for new in loaded:
            old = self._states.get(new.name)
            if old is not None and new.version <= old.version:
                if new.version == old.version and new.backfill_control != old.backfill_control:
                    self._states[new.name] = new  # knobs change without a version bump
                continue
            self._states[new.name] = new
            changed = True
            if self.metrics is not None:
                self.metrics.set_phase(new.name, new.phase.value, new.version)
            if old is not None:
                log.info(
                    "migration %s: observed %s (version %d), was %s (version %d)", new.name,
                    new.phase.value, new.version, old.phase.value, old.version,
                )  # fmt: skip
        if changed:
            self._beat.set()  # tell the fleet at once (once older requests drained)
            async with self._changed:
                self._changed.notify_all()

    async def wait_for_version(self, name: str, version: int, timeout: float) -> bool:
        """Wait until ``name`` is observed at ``version`` or later; ``False`` on timeout."""

        def reached() -> bool:
            s = self._states.get(name)
            return s is not None and s.version >= version

        try:
            async with asyncio.timeout(timeout):
                async with self._changed:
                    await self._changed.wait_for(reached)
        except TimeoutError:
            return reached()
        return True

    # --- read events ----------------------------------------------------------------------

    def count_read_event(self, name: str, kind: str, n: int = 1) -> None:
        """Count ``n`` read events of ``kind`` (see :data:`READ_EVENT_KINDS`) for ``name``.

        In memory only, tagged with the version observed now; the heartbeat loop adds them to
        ``dualwrite_read_events``, where the ``read_switch -> contract`` guards read them.
        """
        if kind not in READ_EVENT_KINDS:
            expected = ", ".join(READ_EVENT_KINDS)
            raise ValueError(f"unknown read event kind {kind!r}: expected one of {expected}")
        if n <= 0:
            return
        self._pending[(name, self.state(name).version, kind)] += n

    async def _flush_read_events(self, conn: AsyncConnection) -> None:
        pending, self._pending = self._pending, Counter()
        try:
            by_key: dict[tuple[str, int], dict[str, int]] = {}
            for (name, version, kind), n in pending.items():
                by_key.setdefault((name, version), {})[kind] = n
            for (name, version), counts in by_key.items():
                await read_events.add_read_events(conn, name, version, counts)
        except BaseException:
            self._pending.update(pending)  # keep them for the next heartbeat
            raise

    # --- loops ----------------------------------------------------------------------------

    def _outage(self, loop: str, exc: BaseException | None) -> None:
        """Log one line when ``loop`` starts failing and one when it recovers."""
        was = self._failing.get(loop, False)
        if exc is not None and not was:
            log.warning(
                "phase %s failed (%s): keeping the last known state, retrying every %.1fs",
                loop,
                _one_line(exc),
                self.poll_interval,
            )
        elif exc is None and was:
            log.warning("phase %s recovered", loop)
        self._failing[loop] = exc is not None

    async def _poll_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.refresh()
                self._outage("poll", None)
            except Exception as exc:
                self._outage("poll", exc)
            if self.listen:
                await self._listener.ensure()

    async def _heartbeat_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self._beat.wait()
            self._beat.clear()
            try:
                await self._heartbeat_once()
                self._outage("heartbeat", None)
            except Exception as exc:
                self._outage("heartbeat", exc)

    async def _heartbeat_once(self) -> None:
        longest = self._inflight.longest_seconds()
        recent = self.metrics.recent_latency if self.metrics else None  # served requests
        p95, routes = recent.summary() if recent else (None, None)
        async with self.engine.begin() as conn:
            for name in self._served_names():
                version, phase = self._inflight.reportable(self._states[name])
                await fleet.heartbeat(conn, fleet.Heartbeat(
                    instance_id=self.instance_id, migration=name, observed_phase=phase,
                    observed_version=version, key_versions=self.key_versions, role=self.role,
                    host=self._host, pid=self._pid, poll_interval_seconds=self.poll_interval,
                    longest_request_seconds=longest, recent_p95_ms=p95, recent_latency=routes,
                ))  # fmt: skip
            await self._flush_read_events(conn)
            if self.metrics is not None:
                await export_heartbeat_gauges(conn, self.metrics, poll_interval=self.poll_interval)
