"""Alembic helpers: the state tables, expand and contract for any table, each with its reverse.

A user's own revisions are a few lines::

    from dualwrite.schema import ops as schema_ops
    from myapp.schema import PATIENTS_PII          # a MigrationSpec

    def upgrade() -> None:
        schema_ops.expand(PATIENTS_PII)

    def downgrade() -> None:
        schema_ops.unexpand(PATIENTS_PII)

and for the contract revision (``dualwrite_contract = True``; it runs only through
``dualwrite finalize``)::

    def upgrade() -> None:
        schema_ops.contract(
            PATIENTS_PII,
            drop_indexes=("ix_patients_clinic_dob",),          # indexes on plaintext columns
            drop_constraints=("uq_patients_clinic_email",),    # constraints on them
        )

    def downgrade() -> None:
        schema_ops.uncontract(PATIENTS_PII)

Every operation runs through the online-DDL runner (:mod:`dualwrite.schema.ddl`): Alembic's
transaction is committed first and each step then runs in its own short transaction on the
same connection, under ``DDL_LOCK_TIMEOUT_MS`` with jittered retries (concurrent index builds
under a watchdog), recording its progress in ``dualwrite_schema_steps``. A failed or killed
revision is rerun as is (``dualwrite db upgrade`` again, ``alembic upgrade`` again): finished
steps are skipped, and Alembic records the revision only once every step is done.

Any Alembic environment works: an ``alembic init -t async`` one (the steps run on Alembic's own
asyncpg connection), an ``alembic init`` one with a synchronous driver such as psycopg (the
steps run on an asyncpg connection of their own to the same database, while Alembic's
connection waits in autocommit mode, holding nothing), or the connection ``dualwrite db
upgrade`` hands over. Before ``dualwrite finalize`` the contract revision refuses with
:class:`ContractRefusedError`, which Alembic's CLI prints as one ``FAILED:`` line; it changes
nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import asyncpg
from alembic import op
from alembic.util import CommandError
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.util import await_only

from dualwrite.errors import DualwriteError
from dualwrite.schema import state_revisions
from dualwrite.schema.ddl import DdlContext, Journal, open_context, plans, run_steps
from dualwrite.schema.ddl.step import Step
from dualwrite.spec import MigrationSpec

ALLOW_CONTRACT = "dualwrite_allow_contract"
"""Alembic ``config.attributes`` key ``dualwrite finalize`` sets: the contract may run."""


class ContractRefusedError(DualwriteError, CommandError):
    """The contract revision refused to run (Alembic's CLI prints it as one ``FAILED:`` line;
    the revision changed nothing)."""


def create_state_tables() -> None:
    """Create the dualwrite state tables at their latest revision (revision 0002 of the
    reference project). Later dualwrite versions bring existing state tables up to date with
    ``dualwrite db upgrade`` (:mod:`dualwrite.schema.state_revisions`)."""
    for statement in state_revisions.create_statements():
        op.execute(statement)


def drop_state_tables() -> None:
    """Reverse of :func:`create_state_tables`."""
    for statement in state_revisions.drop_statements():
        op.execute(statement)


def expand(spec: MigrationSpec) -> None:
    """Refuse duplicate values of ``unique`` fields (listed by primary key, before any change);
    add ciphertext/blind-index/unique-HMAC columns, drop ``NOT NULL`` on the plaintext
    (recorded for the reverse), install the stale-ciphertext trigger, build the blind indexes
    and the UNIQUE ``_uidx`` indexes concurrently, and register ``spec`` in phase
    ``plaintext``."""
    _run(spec, "expand", lambda ctx: _ready(plans.expand(spec)))


def unexpand(spec: MigrationSpec) -> None:
    """Reverse of :func:`expand`. Refuses unless the migration is back in ``plaintext``."""

    async def build(ctx: DdlContext) -> list[Step]:
        phase = await _phase(ctx, spec)
        if phase not in (None, "plaintext"):
            raise DualwriteError(
                f"migration {spec.name} is in phase {phase}: move it back to plaintext "
                "before removing the expand schema"
            )
        return plans.unexpand(spec)

    _run(spec, "unexpand", build, forget=("unexpand",))


def contract(
    spec: MigrationSpec,
    *,
    drop_indexes: tuple[str, ...] = (),
    drop_constraints: tuple[str, ...] = (),
) -> None:
    """Drop the plaintext columns, after a preflight (nothing else depends on them but the
    ``drop_indexes`` and ``drop_constraints`` this revision drops itself -- recorded, and put
    back by :func:`uncontract` -- and every ``unique`` field's UNIQUE index is valid) and a
    validated fence (no row holds plaintext, and none can be written any more). Refuses
    (:class:`ContractRefusedError`) unless the migration is in ``contract`` and ``dualwrite
    finalize`` runs it (or is already ``finalized``)."""
    cfg = op.get_context().config
    allowed = bool(cfg.attributes.get(ALLOW_CONTRACT)) if cfg is not None else False

    async def build(ctx: DdlContext) -> list[Step]:
        phase = await _phase(ctx, spec)
        if phase not in ("contract", "finalized"):
            raise ContractRefusedError(
                f"migration {spec.name} is in phase {phase}: the contract revision runs only "
                f"from contract, through `dualwrite finalize {spec.name}`"
            )
        if phase == "contract" and not allowed:
            raise ContractRefusedError(
                "the contract revision drops plaintext: it runs only through "
                f"`dualwrite finalize {spec.name}`, which checks its guards first"
            )
        return plans.contract(spec, tuple(drop_indexes), tuple(drop_constraints))

    _run(spec, "contract", build)


def uncontract(spec: MigrationSpec) -> None:
    """Reverse of :func:`contract`: re-add the plaintext columns (nullable, each with its
    field's registered type), the stale guard, and the indexes and constraints the contract
    dropped; drop the key guard.

    The values come back with ``dualwrite backfill --mode decrypt``.
    """
    _run(
        spec,
        "uncontract",
        lambda ctx: plans.uncontract(ctx, spec),
        forget=("contract", "uncontract", "rewrite", "scan"),
    )


async def _ready(steps: list[Step]) -> list[Step]:
    return steps


async def _phase(ctx: DdlContext, spec: MigrationSpec) -> str | None:
    if not await ctx.conn.fetchval("SELECT to_regclass('dualwrite_migrations') IS NOT NULL"):
        return None
    value = await ctx.conn.fetchval(
        "SELECT phase FROM dualwrite_migrations WHERE name = $1", spec.name
    )
    return None if value is None else str(value)


def _run(
    spec: MigrationSpec,
    operation: str,
    build: Callable[[DdlContext], Awaitable[list[Step]]],
    *,
    forget: tuple[str, ...] = (),
) -> None:
    """Commit Alembic's transaction, then run the steps of ``operation`` in autocommit mode
    (see the module docstring)."""
    context = op.get_context()
    bind = op.get_bind()
    asyncpg_url = bind.engine.url.set(drivername="postgresql+asyncpg")
    _, kwargs = PGDialect_asyncpg().create_connect_args(asyncpg_url)  # type: ignore[no-untyped-call]
    cfg = context.config
    settings = cfg.attributes.get("settings") if cfg is not None else None

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(**kwargs)

    async def go(raw: asyncpg.Connection) -> None:
        ctx = open_context(raw, connect, settings or _env_settings())
        steps = await build(ctx)
        await run_steps(ctx, spec.name, operation, steps)
        if forget:
            await Journal(raw, spec.name, operation).forget(*forget)

    async def on_own_connection() -> None:
        raw = await connect()
        try:
            await go(raw)
        finally:
            await raw.close()

    with context.autocommit_block():
        if bind.dialect.driver == "asyncpg":  # Alembic's own connection, in its greenlet
            raw = bind.connection.driver_connection
            assert isinstance(raw, asyncpg.Connection)
            await_only(go(raw))
        else:  # a synchronous driver: the steps get a connection of their own
            _block_on(on_own_connection())


def _block_on(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` to the end from synchronous code (in a thread if a loop already runs)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coro)
        return
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coro).result()


def _env_settings() -> object:
    from dualwrite.config import load_settings

    return load_settings()
