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

Metrics: ``dualwrite_crypto_operation_duration_seconds{operation="encrypt"|"decrypt"}`` gets one
observation per row (all its fields together), which is the per-client overhead that matters.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from dualwrite.crypto import BlindIndex, FieldCipher
from dualwrite.errors import DecryptionError, EncryptionUnavailableError
from dualwrite.metrics import Metrics
from dualwrite.phases import Behaviour, ReadSource
from dualwrite.runtime.layout import ReadLayout, _Field, read_columns
from dualwrite.spec import MigrationSpec

__all__ = [
    "FieldCodec",
    "ReadEventSink",
    "ReadLayout",
    "read_columns",
]

log = logging.getLogger("dualwrite.runtime.codec")

_perf = time.perf_counter


class ReadEventSink(Protocol):
    """Where shadow mismatches, read fallbacks and decrypt failures are reported for the
    phase guards (the :class:`dualwrite.runtime.watcher.PhaseWatcher` is one)."""

    def count_read_event(self, name: str, kind: str, n: int = 1) -> None: ...


class FieldCodec:
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
        m, name = self.metrics, spec.name
        self._enc_timer = m.crypto_duration.labels(operation="encrypt")
        self._dec_timer = m.crypto_duration.labels(operation="decrypt")
        self._fallback = {f: m.read_fallbacks.labels(migration=name, field=f) for f in self._fields}
        self._mismatch = {
            f: m.shadow_mismatches.labels(migration=name, field=f) for f in self._fields
        }
        self._shadow_reads = m.shadow_reads.labels(migration=name)
        # created at 0 so that the first failure is an increase Prometheus can see
        self._decrypt_failures = {
            f: m.crypto_failures.labels(operation="decrypt", migration=name, field=f)
            for f in self._fields
        }
        self._layouts: dict[tuple[Behaviour, tuple[str, ...]], ReadLayout] = {}

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
        cipher = self._require_cipher()
        try:
            text = cipher.decrypt(
                ciphertext, table=self.spec.aad_table, column=field, row_key=row_key
            )
        except DecryptionError as exc:
            self._count_decrypt_failure(field, exc)
            raise
        return self._fields[field].vt.value_of(text)

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
        fields = self._fields
        b = behaviour
        encrypting = b.writes_ciphertext
        if encrypting:
            self.require_encryption()
            cipher, bidx = self.cipher, self.blind_index
            assert cipher is not None
            encrypt, table = cipher.encrypt, self.spec.aad_table
            started = _perf()
        for name, value in values.items():
            f = fields.get(name)
            if f is None:
                continue
            if b.writes_plaintext:
                out[f.plaintext] = value
            elif b.nulls_plaintext:
                out[f.plaintext] = None
            if encrypting:
                text = f.vt.text_of(value)  # typed fields: the value as PostgreSQL will store it
                out[f.ciphertext] = encrypt(text, table=table, column=name, row_key=row_key)
                if f.bidx is not None:
                    out[f.bidx] = bidx.stored(text, f.kind) if bidx is not None else None
                if f.uidx is not None:
                    out[f.uidx] = self.unique_for(name, value)
        if encrypting:
            self._enc_timer.observe(_perf() - started)
        return out

    # --- reads -----------------------------------------------------------------------------

    def layout(self, behaviour: Behaviour, columns: Sequence[str]) -> ReadLayout:
        """Index the field columns of a row whose columns are named ``columns`` (cached)."""
        key = (behaviour, tuple(columns))
        found = self._layouts.get(key)
        if found is not None:
            return found
        position = {c: i for i, c in enumerate(columns)}
        slots = tuple(
            (f, position.get(f.plaintext), position.get(f.ciphertext))
            for f in self._fields.values()
        )
        made = ReadLayout(behaviour, slots)
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
        b = layout.behaviour
        slots = layout.slots
        if fields is not None:
            wanted = set(fields)
            slots = tuple(s for s in slots if s[0].name in wanted)
        out: dict[str, Any] = {}
        if b.reads_from is ReadSource.PLAINTEXT:
            for f, pt_i, _ in slots:
                out[f.name] = row[pt_i] if pt_i is not None else None
            if b.shadow_compare and self._sampled():
                self._shadow_check_ciphertext(slots, row, row_key, out)
            return out
        cipher = self._require_cipher()
        decrypt, table = cipher.decrypt, self.spec.aad_table
        fallback = b.fallback_to_plaintext
        started = _perf()
        for f, pt_i, ct_i in slots:
            ct = row[ct_i] if ct_i is not None else None
            if ct is None:
                plain = row[pt_i] if (fallback and pt_i is not None) else None
                if plain is not None:
                    self._count_fallback(f.name)
                out[f.name] = plain
                continue
            try:
                text = decrypt(ct, table=table, column=f.name, row_key=row_key)
            except DecryptionError as exc:
                self._count_decrypt_failure(f.name, exc)
                raise
            out[f.name] = f.vt.value_of(text)
        self._dec_timer.observe(_perf() - started)
        if b.shadow_compare and self._sampled():
            self._shadow_check_plaintext(slots, row, out)
        return out

    def _sampled(self) -> bool:
        rate = self.shadow_sample_rate
        return rate > 0.0 and (rate >= 1.0 or self._sample() < rate)

    def _shadow_check_ciphertext(
        self,
        slots: Sequence[tuple[_Field, int | None, int | None]],
        row: Sequence[Any],
        row_key: str,
        served: Mapping[str, Any],
    ) -> None:
        """Plaintext was served: decrypt the ciphertexts present and compare (backfill)."""
        if self.cipher is None:
            return
        self._shadow_reads.inc()
        decrypt, table = self.cipher.decrypt, self.spec.aad_table
        for f, _, ct_i in slots:
            ct = row[ct_i] if ct_i is not None else None
            if ct is None:
                continue  # not backfilled yet: nothing to compare
            try:
                same = f.vt.same(decrypt(ct, table=table, column=f.name, row_key=row_key),
                              served[f.name])  # fmt: skip
            except DecryptionError as exc:
                self._decrypt_failures[f.name].inc()
                log.warning("shadow read: %s", exc)
                same = False
            if not same:
                self._count_mismatch(f.name, "ciphertext")

    def _shadow_check_plaintext(
        self,
        slots: Sequence[tuple[_Field, int | None, int | None]],
        row: Sequence[Any],
        served: Mapping[str, Any],
    ) -> None:
        """Ciphertext was served: compare with the plaintext column (read_switch)."""
        self._shadow_reads.inc()
        for f, pt_i, ct_i in slots:
            if pt_i is None or ct_i is None or row[ct_i] is None:
                continue  # a fallback already served (and counted) the plaintext
            if not f.vt.equal(row[pt_i], served[f.name]):
                self._count_mismatch(f.name, "plaintext")

    # --- counting --------------------------------------------------------------------------

    def _event(self, kind: str) -> None:
        if self.events is not None:
            self.events.count_read_event(self.spec.name, kind, 1)

    def _count_fallback(self, field: str) -> None:
        self._fallback[field].inc()
        self._event("read_fallback")

    def _count_mismatch(self, field: str, other: str) -> None:
        self._mismatch[field].inc()
        self._event("shadow_mismatch")
        log.warning(
            "shadow read mismatch: %s.%s differs from its %s (values not logged)",
            self.spec.table,
            field,
            other,
        )

    def _count_decrypt_failure(self, field: str, exc: DecryptionError) -> None:
        self._decrypt_failures[field].inc()
        self._event("decrypt_failure")
        log.error("read failed: %s", exc)

    def __repr__(self) -> str:
        return f"FieldCodec(migration={self.spec.name!r}, can_encrypt={self.can_encrypt})"
