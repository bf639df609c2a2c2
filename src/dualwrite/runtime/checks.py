"""Shadow compares and read-event counting of :class:`dualwrite.runtime.codec.FieldCodec`.

Split from the codec (a mixin: the codec owns the state named in :class:`ReadChecks`); a
mismatch is counted and logged with table/column only, never the values.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from dualwrite.crypto import FieldCipher
from dualwrite.errors import DecryptionError
from dualwrite.metrics import Metrics
from dualwrite.runtime.layout import _Field
from dualwrite.spec import MigrationSpec

__all__ = ["ReadChecks", "ReadEventSink"]

log = logging.getLogger("dualwrite.runtime.codec")


class ReadEventSink(Protocol):
    """Where shadow mismatches, read fallbacks and decrypt failures are reported for the
    phase guards (the :class:`dualwrite.runtime.watcher.PhaseWatcher` is one)."""

    def count_read_event(self, name: str, kind: str, n: int = 1) -> None: ...


class ReadChecks:
    """The shadow compares and counters of a field codec (state set by its ``__init__``)."""

    spec: MigrationSpec
    cipher: FieldCipher | None
    events: ReadEventSink | None
    shadow_sample_rate: float
    _sample: Callable[[], float]
    _shadow_reads: Any
    _fallback: dict[str, Any]
    _mismatch: dict[str, Any]
    _decrypt_failures: dict[str, Any]

    def _bind_counters(self, m: Metrics, migration: str, fields: Sequence[str]) -> None:
        """The labelled counters of ``fields``, bound once (no label lookup per read)."""
        self._fallback = {f: m.read_fallbacks.labels(migration=migration, field=f) for f in fields}
        self._mismatch = {
            f: m.shadow_mismatches.labels(migration=migration, field=f) for f in fields
        }
        self._shadow_reads = m.shadow_reads.labels(migration=migration)
        # created at 0 so that the first failure is an increase Prometheus can see
        self._decrypt_failures = {
            f: m.crypto_failures.labels(operation="decrypt", migration=migration, field=f)
            for f in fields
        }

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
