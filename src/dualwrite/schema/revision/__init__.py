"""``dualwrite revision``: write a migration's revisions into the project's own Alembic folder.

    $ dualwrite revision patients_pii --table clinic.patients --scope clinic_id \\
        --field full_name:search=text --field email:search=email:unique \\
        --field date_of_birth:search --field intake --field balance --field last_visit

* :mod:`~dualwrite.schema.revision.options` -- parse the name, table and ``--field`` options;
* :mod:`~dualwrite.schema.revision.introspect` -- read the live table, decide the spec;
* :mod:`~dualwrite.schema.revision.render` -- the revision files (pure text).

Every refusal (a name that is not an identifier, an unknown table or field, a composite key, a
type that cannot be encrypted exactly, a UNIQUE constraint that would silently stop enforcing)
is one line, and nothing is written.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from dualwrite.errors import ConfigError
from dualwrite.schema.revision.introspect import build_spec, describe, read_table
from dualwrite.schema.revision.options import check_name, parse_field, parse_table
from dualwrite.schema.revision.render import RevisionFile, render_revisions
from dualwrite.spec import MigrationSpec

__all__ = ["generate"]


def _project(cfg: Config, name: str) -> tuple[ScriptDirectory, str | None, bool]:
    """The script directory, its single head, and whether a revision creates the state tables."""
    try:
        script = ScriptDirectory.from_config(cfg)
        heads = script.get_heads()
        revisions = list(script.walk_revisions())
    except Exception as exc:
        raise ConfigError(f"cannot read the Alembic project: {str(exc).splitlines()[0]}") from None
    if len(heads) > 1:
        raise ConfigError(f"the Alembic project has several heads ({', '.join(heads)}): merge them")
    has_state = False
    for rev in revisions:
        if getattr(rev.module, "dualwrite_migration", None) == name:
            raise ConfigError(f"revision {rev.revision} already contracts migration {name}")
        source = Path(rev.path).read_text(encoding="utf-8", errors="replace")
        has_state = has_state or "create_state_tables(" in source
    return script, (heads[0] if heads else None), has_state


async def generate(
    engine: AsyncEngine,
    cfg: Config,
    name: str,
    table: str,
    fields: list[str],
    scope: str | None = None,
) -> tuple[MigrationSpec, list[Path]]:
    """Introspect ``table`` and write the revisions; returns the spec and the files written."""
    check_name("migration name", name)
    schema, bare = parse_table(table)
    options = [parse_field(f) for f in fields]
    if not options:
        raise ConfigError("name at least one --field")
    seen = [o.name for o in options]
    if len(set(seen)) != len(seen):
        raise ConfigError("a --field is listed twice")
    if scope is not None:
        check_name("scope column", scope)
    script, head, has_state = _project(cfg, name)
    async with engine.connect() as conn:
        live = await read_table(conn, schema, bare, seen)
    spec = build_spec(name, live, options, scope)
    ids = [uuid.uuid4().hex[:12] for _ in range(3)]
    files = render_revisions(
        spec, ids, head, with_state_tables=not has_state, drop_indexes=live.indexes,
        drop_constraints=live.constraints, notes=describe(spec, live),
    )  # fmt: skip
    return spec, _write(Path(script.versions), files)


def _write(folder: Path, files: list[RevisionFile]) -> list[Path]:
    """Write every file or none (temporary names first, then renamed)."""
    if not folder.is_dir():
        raise ConfigError(f"the Alembic versions folder {folder} does not exist")
    staged: list[tuple[Path, Path]] = []
    try:
        for f in files:
            final = folder / f.filename
            tmp = folder / f".{f.filename}.tmp"
            tmp.write_text(f.text, encoding="utf-8")
            staged.append((tmp, final))
        for tmp, final in staged:
            os.replace(tmp, final)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    return [final for _, final in staged]
