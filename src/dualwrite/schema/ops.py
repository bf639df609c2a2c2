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
        schema_ops.contract(PATIENTS_PII, drop_indexes=("ix_patients_email",))

    def downgrade() -> None:
        schema_ops.uncontract(PATIENTS_PII)

Every operation runs through the online-DDL runner (:mod:`dualwrite.schema.ddl`): Alembic's
transaction is committed first and each step then runs in its own short transaction on the
same connection, under ``DDL_LOCK_TIMEOUT_MS`` with jittered retries (concurrent index builds
under a watchdog), recording its progress in ``dualwrite_schema_steps``. A failed or killed
revision is rerun as is (``dualwrite db upgrade`` again, ``alembic upgrade`` again): finished
steps are skipped, and Alembic records the revision only once every step is done.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg
from alembic import op
from sqlalchemy.util import await_only

from dualwrite.errors import ConfigError, DualwriteError
from dualwrite.schema import state_revisions
from dualwrite.schema.ddl import DdlContext, Journal, open_context, plans, run_steps
from dualwrite.schema.ddl.step import Step
from dualwrite.spec import MigrationSpec

ALLOW_CONTRACT = "dualwrite_allow_contract"
"""Alembic ``config.attributes`` key ``dualwrite finalize`` sets: the contract may run."""


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
    """Add ciphertext/blind-index columns, drop ``NOT NULL`` on the plaintext (recorded for the
    reverse), install the stale-ciphertext trigger, build the blind indexes concurrently, and
    register ``spec`` in phase ``plaintext``."""
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


def contract(spec: MigrationSpec, *, drop_indexes: tuple[str, ...] = ()) -> None:
    """Drop the plaintext columns, after a preflight (nothing else depends on them but the
    ``drop_indexes`` this revision drops itself) and a validated fence (no row holds
    plaintext, and none can be written any more). Refuses unless the migration is in
    ``contract`` and ``dualwrite finalize`` runs it (or is already ``finalized``)."""
    cfg = op.get_context().config
    allowed = bool(cfg.attributes.get(ALLOW_CONTRACT)) if cfg is not None else False

    async def build(ctx: DdlContext) -> list[Step]:
        phase = await _phase(ctx, spec)
        if phase not in ("contract", "finalized"):
            raise DualwriteError(
                f"migration {spec.name} is in phase {phase}: the contract revision runs only "
                "from contract, through `dualwrite finalize`"
            )
        if phase == "contract" and not allowed:
            raise DualwriteError(
                "the contract revision drops plaintext: it runs only through "
                f"`dualwrite finalize {spec.name}`, which checks its guards first"
            )
        return plans.contract(spec, tuple(drop_indexes))

    _run(spec, "contract", build)


def uncontract(spec: MigrationSpec) -> None:
    """Reverse of :func:`contract`: re-add the plaintext columns (nullable, their recorded
    types), the stale guard, and the indexes the contract dropped; drop the key guard.

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
    """Commit Alembic's transaction, then run the steps of ``operation`` on its connection in
    autocommit mode (see the module docstring)."""
    context = op.get_context()
    bind = op.get_bind()
    if bind.dialect.driver != "asyncpg":
        raise ConfigError("dualwrite schema operations need the postgresql+asyncpg driver")
    _, kwargs = bind.dialect.create_connect_args(bind.engine.url)
    settings = context.config.attributes.get("settings") if context.config else None

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(**kwargs)

    async def go(raw: asyncpg.Connection) -> None:
        ctx = open_context(raw, connect, settings or _env_settings())
        steps = await build(ctx)
        await run_steps(ctx, spec.name, operation, steps)
        if forget:
            await Journal(raw, spec.name, operation).forget(*forget)

    with context.autocommit_block():
        raw = bind.connection.driver_connection
        assert isinstance(raw, asyncpg.Connection)
        await_only(go(raw))


def _env_settings() -> object:
    from dualwrite.config import load_settings

    return load_settings()
