"""Per-field encoding of one migration's values, phase by phase (no I/O besides logging).

A :class:`FieldCodec` turns the application's plain values into the column values a phase
writes, and a fetched row back into plain values, following :func:`dualwrite.phases.behaviour`:

>>> from dualwrite.crypto import BlindIndex, DataKey, FieldCipher, Keyring
>>> from dualwrite.phases import behaviour
>>> from dualwrite.spec import FieldSpec, MigrationSpec
>>> spec = MigrationSpec("t_pii", "t", (FieldSpec("email", blind_index="email"),))
>>> cipher = FieldCipher(Keyring([DataKey("v1", bytes(32))]))
>>> codec = FieldCodec(spec, cipher, BlindIndex(bytes(32)))
>>> cols = codec.write_columns(behaviour("dual_write"), {"email": "ada@example.com"}, "7")
>>> sorted(cols), cols["email_encrypted"][:3]
(['email', 'email_bidx', 'email_encrypted'], b'v1:')
>>> sorted(codec.write_columns(behaviour("contract"), {"email": "x@y.z"}, "7").items())[0]
('email', None)
>>> layout = codec.layout(behaviour("finalized"), ["email_encrypted"])
>>> codec.decode(layout, (cols["email_encrypted"],), "7")
{'email': 'ada@example.com'}

Rules it implements (DESIGN.md §5, §6):

* ciphertext and blind index of a field are computed together and belong in the same statement
  as the plaintext; ``contract`` writes the plaintext as NULL, ``finalized`` leaves it out;
* a phase that writes ciphertext refuses to encode when this instance cannot encrypt
  (:class:`EncryptionUnavailableError`, an HTTP 503): never a plaintext-only row;
* reads come from the phase's source; a missing ciphertext with a plaintext present is served
  from plaintext when the phase allows it (``fallback_to_plaintext``), counted as a read fallback;
* a sample of reads (``shadow_sample_rate``, per row) also checks the other source; a
  mismatch is counted and logged with table/column only, never the values;
* a ciphertext that does not decrypt raises :class:`~dualwrite.errors.DecryptionError` (counted);
* typed values are encrypted as their canonical text (:mod:`dualwrite.crypto.values`) and read
  back as the column's type; a ``unique`` field also writes ``<name>_uidx``.

Metrics: ``dualwrite_crypto_operation_duration_seconds{operation="encrypt"|"decrypt"}`` is a
sampled distribution of the per-row cost: one row in :data:`TIMED_EVERY` written or read alone
is timed (all its fields together; the first one always), and one observation per statement of
:meth:`FieldCodec.decode_rows` (the mean per row). An update costs about two field decryptions
(a lock, an mmap write in multiprocess mode): a sample keeps the quantiles for an eighth.

Speed: the hot paths inline :class:`~dualwrite.crypto.FieldCipher`'s ``sealer``/``openers``; a
page opens column by column (:mod:`dualwrite.runtime.bulk`); the unusual goes to the checked
``encrypt``/``decrypt``.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from dualwrite.crypto import BlindIndex, FieldCipher, row_key_of
from dualwrite.errors import DecryptionError, EncryptionUnavailableError
from dualwrite.metrics import Metrics
from dualwrite.phases import Behaviour, ReadSource
from dualwrite.runtime.bulk import open_columns
from dualwrite.runtime.checks import ReadChecks, ReadEventSink
from dualwrite.runtime.layout import ReadLayout, _Field, open_plan, read_columns, seal_plan, subset
from dualwrite.spec import MigrationSpec

__all__ = [
    "TIMED_EVERY",
    "FieldCodec",
    "ReadEventSink",
    "ReadLayout",
    "read_columns",
]


_perf = time.perf_counter
_urandom = os.urandom
_NONCE, _BODY = slice(3, 15), slice(15, None)  # of b"vN:" + nonce + body; ready slices
TIMED_EVERY = 8
"""One single-row encode/decode in this many goes into the crypto duration histogram."""


class FieldCodec(ReadChecks):
    """Encodes/decodes the fields of one :class:`MigrationSpec` (see the module docstring).

    ``cipher``/``blind_index`` may be ``None`` when this instance has no usable keys; then every
    operation that needs them raises :class:`EncryptionUnavailableError` with
    ``unavailable_reason`` (a one-line, key-free explanation). ``events`` receives read events
    for the phase guards; ``metrics`` the counters. Thread-safe; build one per process.
    """

    def __init__(
        self,
        spec: MigrationSpec,
        cipher: FieldCipher | None,
        blind_index: BlindIndex | None,
        metrics: Metrics | None = None,
        *,
        events: ReadEventSink | None = None,
        shadow_sample_rate: float = 0.0,
        unavailable_reason: str | None = None,
        sample: Callable[[], float] = random.random,
    ) -> None:
        self.spec = spec
        self.cipher = cipher
        self.blind_index = blind_index
        self.metrics = metrics if metrics is not None else Metrics()
        self.events = events
        self.shadow_sample_rate = shadow_sample_rate
        self._sample = sample
        self._fields = {f.name: _Field.of(f) for f in spec.fields}
        self._unavailable = self._why_unavailable(unavailable_reason)
        self._enc_timer = self.metrics.crypto_duration.labels(operation="encrypt")
        self._dec_timer = self.metrics.crypto_duration.labels(operation="decrypt")
        self._bind_counters(self.metrics, spec.name, tuple(self._fields))
        self._ticks = itertools.count()  # next() is atomic: the timing sample across threads
        self._layouts: dict[tuple[Behaviour, tuple[str, ...], bool], ReadLayout] = {}
        self._seals: dict[str, tuple[Any, ...]] = {}

    def _why_unavailable(self, reason: str | None) -> str | None:
        if self.cipher is None:
            return reason or "no encryption keyring is loaded"
        if self.blind_index is None and (self.spec.searchable or self.spec.unique_fields):
            return reason or "no blind index key (BLIND_INDEX_KEY) is configured"
        return None

    # --- availability ----------------------------------------------------------------------

    @property
    def can_encrypt(self) -> bool:
        return self._unavailable is None

    def require_encryption(self) -> None:
        """Raise :class:`EncryptionUnavailableError` unless this instance can encrypt."""
        if self._unavailable is not None:
            raise EncryptionUnavailableError(
                f"this instance cannot encrypt {self.spec.table}: {self._unavailable}"
            )

    def _require_cipher(self) -> FieldCipher:
        if self.cipher is None:
            raise EncryptionUnavailableError(
                f"this instance cannot decrypt {self.spec.table}: {self._unavailable}"
            )
        return self.cipher

    # --- single fields (public, for the backfiller) -----------------------------------------

    def bidx_for(self, field: str, value: str | None) -> bytes | None:
        """The blind index of ``value`` for a searchable ``field`` (``None`` for None/empty).

        Raises ``KeyError`` for an unknown field, ``ValueError`` for a non-searchable one.
        """
        f = self._fields[field]
        if f.kind is None:
            raise ValueError(f"field {field} has no blind index")
        return self._index_key().compute(f.vt.text_of(value), f.kind)

    def unique_for(self, field: str, value: Any) -> bytes | None:
        """The ``<name>_uidx`` of ``value`` for a ``unique`` field (``None`` for None)."""
        vt, key = self._fields[field].vt, self._index_key()
        text = vt.text_of(value)
        return None if text is None else key.unique(vt.equality_text(text))

    def _index_key(self) -> BlindIndex:
        if self.blind_index is None:
            self.require_encryption()
            raise EncryptionUnavailableError("no blind index key (BLIND_INDEX_KEY) is configured")
        return self.blind_index

    def encode_field(
        self, field: str, value: Any, row_key: str
    ) -> tuple[bytes | None, bytes | None]:
        """``(ciphertext, blind index)`` of one value (blind index ``None`` if not searchable)."""
        self.require_encryption()
        f = self._fields[field]
        assert self.cipher is not None
        text = f.vt.text_of(value)
        ct = self.cipher.encrypt(text, table=self.spec.aad_table, column=f.name, row_key=row_key)
        bidx = self.blind_index.stored(text, f.kind) if f.kind and self.blind_index else None
        return ct, bidx

    def decrypt_field(self, field: str, ciphertext: bytes | None, row_key: str) -> Any:
        """Decrypt one stored value (to the column's Python type); a failure is counted and
        raised as ``DecryptionError``."""
        return self._fields[field].vt.value_of(self._decrypt_checked(field, ciphertext, row_key))

    # --- writes ----------------------------------------------------------------------------

    def write_columns(
        self, behaviour: Behaviour, values: Mapping[str, Any], row_key: str
    ) -> dict[str, Any]:
        """The column values this phase writes for ``values`` (only the fields given).

        Non-field keys are ignored (the caller writes them). Raises
        :class:`EncryptionUnavailableError` before doing anything if ciphertext is needed but
        cannot be made.
        """
        out: dict[str, Any] = {}
        b = behaviour
        pt_value = b.writes_plaintext
        pt_null = b.nulls_plaintext and not pt_value
        if not b.writes_ciphertext:
            fields = self._fields
            for name, value in values.items():
                f = fields.get(name)
                if f is not None and (pt_value or pt_null):
                    out[f.plaintext] = value if pt_value else None
            return out
        self.require_encryption()
        timed = not next(self._ticks) % TIMED_EVERY
        started = _perf() if timed else 0.0
        seals = self._seals or self._build_seals()
        rk = row_key.encode() if type(row_key) is str else b""
        n = len(rk)
        fast = 0 < n < 128
        nonces = _urandom(12 * len(values)) if fast else b""
        at = 0
        for name, value in values.items():
            p = seals.get(name)
            if p is None:
                continue
            pt_col, ct_col, head, seal, pres, text_of, limit, bidx_col, bidx, kind, uidx = p
            if pt_value:
                out[pt_col] = value
            elif pt_null:
                out[pt_col] = None
            if (
                type(value) is str
                and limit is not None
                and (limit == 0 or (len(value) <= limit and "\x00" not in value))
            ):
                text = value  # a text column's value is its own text (ValueType.text_of)
            else:
                text = text_of(value)  # typed fields: the value as PostgreSQL will store it
            if text is None:
                out[ct_col] = None
            else:
                try:
                    if not fast:
                        raise ValueError  # an unusual row key: the checked path
                    nonce = nonces[at : at + 12]
                    at += 12
                    out[ct_col] = head + nonce + seal(nonce, text.encode(), pres[n] + rk)
                except (LookupError, TypeError, AttributeError, ValueError):
                    out[ct_col] = self._require_cipher().encrypt(
                        text, table=self.spec.aad_table, column=name, row_key=row_key
                    )
            if bidx is not None:
                out[bidx_col] = bidx(text, kind)
            if uidx is not None:
                out[uidx] = self.unique_for(name, value)
        if timed:
            self._enc_timer.observe(_perf() - started)
        return out

    # --- reads -----------------------------------------------------------------------------

    def layout(
        self, behaviour: Behaviour, columns: Sequence[str], *, sampled: bool = False
    ) -> ReadLayout:
        """Index the field columns of a row whose columns are named ``columns`` (cached);
        ``sampled``: the statement was drawn for the shadow compare (:meth:`sample_statement`),
        every row of it is compared."""
        key = (behaviour, tuple(columns), sampled)
        found = self._layouts.get(key)
        if found is not None:
            return found
        position = {c: i for i, c in enumerate(columns)}
        slots = tuple(
            (f, position.get(f.plaintext), position.get(f.ciphertext))
            for f in self._fields.values()
        )
        plan = open_plan(self.cipher, self.spec.aad_table, slots) if self.cipher else None
        made = ReadLayout(behaviour, slots, plan, sampled)
        self._layouts[key] = made
        return made

    def decode(
        self,
        layout: ReadLayout,
        row: Sequence[Any],
        row_key: str,
        fields: Iterable[str] | None = None,
    ) -> dict[str, Any]:
        """The plain values of one fetched row (all fields, or only ``fields``)."""
        out: dict[str, Any] = {}
        self.decode_into(out, layout, row, row_key, fields)
        return out

    def decode_into(
        self,
        out: dict[str, Any],
        layout: ReadLayout,
        row: Sequence[Any],
        row_key: str,
        fields: Iterable[str] | None = None,
        *,
        timed: bool = True,
    ) -> None:
        """:meth:`decode` into an existing dict (the caller's row dict: no second dict);
        ``timed=False`` leaves the timer to the caller (:meth:`decode_rows`), otherwise one
        call in :data:`TIMED_EVERY` is timed."""
        b = layout.behaviour
        slots = layout.slots
        if fields is not None:
            wanted = set(fields)
            slots = tuple(s for s in slots if s[0].name in wanted)
        if b.reads_from is ReadSource.PLAINTEXT:
            for f, pt_i, _ in slots:
                out[f.name] = row[pt_i] if pt_i is not None else None
            if b.shadow_compare and (layout.sampled or self._sampled()):
                self._shadow_check_ciphertext(slots, row, row_key, out)
            return
        plan = layout.plan if fields is None else None
        if plan is None:
            plan = open_plan(self._require_cipher(), self.spec.aad_table, slots, columns=False)
        fallback = b.fallback_to_plaintext
        timed = timed and not next(self._ticks) % TIMED_EVERY
        started = _perf() if timed else 0.0
        rk = row_key.encode() if type(row_key) is str else b""
        n = len(rk)
        nonce_at, body_at = _NONCE, _BODY
        for name, pt_i, ct_i, versions, conv, _ in plan:
            ct = row[ct_i] if ct_i is not None else None
            if ct is None:
                plain = row[pt_i] if (fallback and pt_i is not None) else None
                if plain is not None:
                    self._count_fallback(name)
                out[name] = plain
                continue
            try:
                if ct[0] != 118 or ct[2] != 58:  # not b"vN:": the checked path says why
                    raise ValueError
                open_, pres = versions[ct[1]]
                text = open_(ct[nonce_at], ct[body_at], pres[n] + rk).decode()
            except Exception:  # anything unusual: the checked path names the failure
                text = self._decrypt_checked(name, ct, row_key)
            out[name] = text if conv is None else conv(text)
        if timed:
            self._dec_timer.observe(_perf() - started)
        if b.shadow_compare and (layout.sampled or self._sampled()):
            self._shadow_check_plaintext(slots, row, out)

    def decode_rows(
        self,
        layout: ReadLayout,
        rows: Iterable[Sequence[Any]],
        others: Sequence[str],
        key_index: int,
        fields: Iterable[str] | None = None,
    ) -> list[dict[str, Any]]:
        """One dict per row: the leading non-field columns named ``others``, then the decoded
        fields (see :meth:`decode`); the row key is column ``key_index``. A statement's rows
        are one timer observation (their mean per row), not one each."""
        if fields is not None:  # the fields' slots and plan once, not per row
            layout = subset(layout, fields, self.cipher, self.spec.aad_table)
        b, n, started = layout.behaviour, len(others), _perf()
        rows = rows if isinstance(rows, Sequence) else list(rows)
        out = [dict(zip(others, row[:n], strict=True)) for row in rows]
        keys = [row_key_of(row[key_index]) for row in rows]
        opened = b.reads_from is ReadSource.CIPHERTEXT
        plan = layout.plan if opened and not b.shadow_compare else None
        parts = (
            [layout]
            if plan is None
            else [  # column-wise, what is left per row (runtime.bulk)
                ReadLayout(b, (layout.slots[i],), (plan[i],))
                for i in open_columns(out, rows, [k.encode() for k in keys], plan)
            ]
        )
        for part in parts:
            for item, row, key in zip(out, rows, keys, strict=True):
                self.decode_into(item, part, row, key, timed=False)
        if out and opened:
            self._dec_timer.observe((_perf() - started) / len(out))
        return out

    def _decrypt_checked(self, field: str, ciphertext: Any, row_key: str) -> str | None:
        try:
            return self._require_cipher().decrypt(
                ciphertext, table=self.spec.aad_table, column=field, row_key=row_key
            )
        except DecryptionError as exc:
            self._count_decrypt_failure(field, exc)
            raise

    def _build_seals(self) -> dict[str, tuple[Any, ...]]:
        self._seals = seal_plan(
            self._require_cipher(), self.spec.aad_table, self._fields, self.blind_index
        )
        return self._seals

    def sample_statement(self) -> bool:
        """Draw whether one statement's rows are all shadow-compared (same expected share of
        compared rows as the per-row draw; see :meth:`EncryptedTable.fetch`)."""
        return self._sampled()

    def __repr__(self) -> str:
        return f"FieldCodec(migration={self.spec.name!r}, can_encrypt={self.can_encrypt})"
