"""SQLAlchemy ORM integration: one declaration on an existing declarative model.

::

    class Patient(Base):                      # the app's model, unchanged
        __tablename__ = "patients"
        __table_args__ = {"schema": "clinic"}
        id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
        email: Mapped[str]
        date_of_birth: Mapped[date | None]
        intake: Mapped[dict[str, Any] | None] = mapped_column(JSONB)

    PATIENTS = encrypted(Patient, PATIENTS_PII)          # at import time, once

    # at start-up, once the keys and the phase watcher exist:
    PATIENTS.bind(FieldCodec(PATIENTS_PII, cipher, bidx, metrics, events=watcher),
                  lambda: watcher.behaviour("patients_pii"))

The app then keeps its ORM code in every phase. Supported (tested in every phase):

* ``session.add(obj)`` + flush/commit (any key: a Python default, or identity/serial keys that
  come back from ``RETURNING``), attribute assignment + flush, ``session.delete``;
* ``await session.get(Model, pk)``, ``select(Model).where(...)`` on unencrypted columns,
  ``session.refresh``, relationship loads (lazy ``select`` and ``selectinload``);
* ``Model.field == value`` on a field declared with ``search`` (normalised like the blind
  index: ``email``/``phone``/``text``; ``exact`` for typed fields such as a date of birth);
* ``update(Model)``/``delete(Model)`` statements that set no encrypted field.

Refused with :class:`~dualwrite.errors.UnsupportedQueryError` before anything runs: bulk
methods (``session.execute(insert(Model), [...])``, ``bulk_save_objects``,
``bulk_insert_mappings``, ``bulk_update_mappings``, ``update(Model)`` setting a field),
column-only selects of an encrypted field (``select(Model.email)``), ``LIKE``/``ilike``/
``contains``/ordering/ranges on an encrypted field, equality on a field without ``search``,
and joined eager loads of an encrypted model in a phase that reads ciphertext.

The phase rules are the Core path's (:mod:`dualwrite.runtime.codec`): one phase per unit of
work, fallback and shadow reads counted, the finalize window handled
(:mod:`dualwrite.runtime.orm.session`).
"""

from __future__ import annotations

from typing import Any

from dualwrite.runtime.orm.model import EncryptedModel
from dualwrite.runtime.orm.session import install, register
from dualwrite.spec import MigrationSpec

__all__ = ["EncryptedModel", "encrypted", "install"]


def encrypted(model: type[Any], spec: MigrationSpec) -> EncryptedModel:
    """Declare ``model``'s fields encrypted by migration ``spec`` (once, at import time);
    :meth:`EncryptedModel.bind` it at start-up."""
    em = EncryptedModel(model, spec)
    register(em)
    return em
