"""The revision files ``dualwrite revision`` writes (pure text from a frozen spec).

Three revisions, chained after the project's current head: the dualwrite state tables (only if
no revision of the project creates them yet), the expand, and the contract (marked
``dualwrite_contract = True`` and ``dualwrite_migration = NAME``: ``dualwrite db upgrade`` stops
before it, ``dualwrite finalize`` applies it, and a plain ``alembic upgrade head`` before
finalize refuses there with one line). Each revision imports only ``dualwrite`` -- the spec is
frozen in the file as JSON, so the revision means the same thing whatever the app's code
becomes later.
"""

from __future__ import annotations

import json
import pprint
from dataclasses import dataclass
from typing import Any

from dualwrite.spec import MigrationSpec

__all__ = ["RevisionFile", "render_revisions"]


@dataclass(frozen=True, slots=True)
class RevisionFile:
    revision: str
    filename: str
    text: str


_HEAD = '''"""{title}

Revision ID: {rev}
Revises: {down}
Written by ``dualwrite revision``{extra}
"""

from __future__ import annotations

{imports}
revision = {rev!r}
down_revision = {down_repr}
branch_labels = None
depends_on = None
'''


def _spec_literal(spec: MigrationSpec) -> str:
    return (
        "SPEC = MigrationSpec.from_json(\n    "
        + pprint.pformat(spec.to_json(), indent=4, width=96, sort_dicts=False).replace(
            "\n", "\n    "
        )
        + "\n)\n"
    )


def _names(names: list[str]) -> str:
    """A tuple literal of names (``()`` when empty)."""
    return "(" + "".join(f"{json.dumps(n)}, " for n in names).rstrip(" ") + ")"


def _file(
    rev: str, down: str | None, title: str, body: str, extra: str = "", *, spec: bool = True
) -> str:
    imports = "from dualwrite.schema import ops\n"
    if spec:
        imports += "from dualwrite.spec import MigrationSpec\n"
    head = _HEAD.format(
        title=title, rev=rev, down=down or "", down_repr=repr(down), imports=imports, extra=extra
    )
    return head + "\n" + body


def render_revisions(
    spec: MigrationSpec,
    ids: list[str],
    head: str | None,
    *,
    with_state_tables: bool,
    drop_indexes: list[str],
    drop_constraints: list[str],
    notes: dict[str, Any],
) -> list[RevisionFile]:
    """The files, in order; ``ids`` gives one fresh revision id per file."""
    out: list[RevisionFile] = []
    ids = list(ids)
    down = head
    if with_state_tables:
        rev = ids.pop(0)
        body = (
            "dualwrite_state_tables = True\n\n\n"
            "def upgrade() -> None:\n    ops.create_state_tables()\n\n\n"
            "def downgrade() -> None:\n    ops.drop_state_tables()\n"
        )
        text = _file(rev, down, "dualwrite state tables (phase rows, audit, fleet, checkpoints, "
                     "results).", body, spec=False)  # fmt: skip
        out.append(RevisionFile(rev, f"{rev}_dualwrite_state_tables.py", text))
        down = rev
    detail = (
        f"\n\nKey {notes['key']}; fields {', '.join(f.name for f in spec.fields)}; NOT NULL "
        f"before the expand: {', '.join(notes['not_null']) or 'none'}; replaced at the "
        f"contract: {'; '.join(notes['replaced']) or 'nothing'}."
    )
    rev = ids.pop(0)
    body = (
        _spec_literal(spec) + "\n\ndef upgrade() -> None:\n    ops.expand(SPEC)\n\n\n"
        "def downgrade() -> None:\n    ops.unexpand(SPEC)\n"
    )
    title = f"Expand {spec.table} for migration {spec.name}: ciphertext columns, guard, indexes."
    text = _file(rev, down, title, body, detail)
    out.append(RevisionFile(rev, f"{rev}_{spec.name}_expand.py", text))
    down = rev
    rev = ids.pop(0)
    body = (
        _spec_literal(spec)
        + f"\ndualwrite_contract = True\ndualwrite_migration = {spec.name!r}\n"
        + f"DROP_INDEXES = {_names(drop_indexes)}\n"
        + f"DROP_CONSTRAINTS = {_names(drop_constraints)}\n"
        + '"""What depends on the plaintext columns: the contract drops it first (recording each '
        'definition), its downgrade rebuilds it online."""\n' + "\n\ndef upgrade() -> None:\n"
        "    ops.contract(SPEC, drop_indexes=DROP_INDEXES, drop_constraints=DROP_CONSTRAINTS)\n"
        "\n\ndef downgrade() -> None:\n    ops.uncontract(SPEC)\n"
    )
    title = (
        f"Contract {spec.table} for migration {spec.name}: drop the plaintext columns "
        "(only through `dualwrite finalize`)."
    )
    text = _file(rev, down, title, body, detail)
    out.append(RevisionFile(rev, f"{rev}_{spec.name}_contract.py", text))
    return out
