"""The phases of a migration: what each one means, which moves exist, which guards apply (pure).

Pure: no I/O, no clock. Four modules, each importing only the ones before it:

* :mod:`~dualwrite.phases.model` -- ``Phase``, ``Behaviour`` and the one ``BEHAVIOURS`` table
  (what each phase means for writes, reads and the backfiller), the legal moves;
* :mod:`~dualwrite.phases.facts` -- the :class:`Facts` snapshot the guards judge;
* :mod:`~dualwrite.phases.guards` -- one function per guard, ``GuardResult``, ``Decision``;
* :mod:`~dualwrite.phases.policy` -- which guards each move needs, :func:`evaluate`.

Other code asks this package (``behaviour(phase).reads_from``, ``evaluate(...)``) instead of
comparing phase names; callers pass a :class:`Facts` snapshot whose ``now`` is the time of the
snapshot.

>>> b = behaviour("read_switch")
>>> b.reads_from, b.writes_plaintext, b.fallback_to_plaintext
(<ReadSource.CIPHERTEXT: 'ciphertext'>, True, True)
>>> next_phase(Phase.BACKFILL), previous_phase(Phase.PLAINTEXT)
(<Phase.READ_SWITCH: 'read_switch'>, None)

``Decision.raise_if_refused()`` turns a refusal into ``GuardsFailedError``, whose ``failures``
are the failing :class:`GuardResult` objects.

Choices made here (DESIGN.md §5 is silent on them):

* ``backfill`` allows the ``rekey`` mode besides ``encrypt``: re-keying only rewrites ciphertext,
  which nobody reads yet in that phase, so it is safe and lets a key rotation finish early.
* ``contract`` keeps ``fallback_to_plaintext``: its plaintext columns still exist, and a row whose
  ciphertext went missing (a legacy writer, caught by the stale-ciphertext trigger) is better
  served from plaintext (and counted) than as NULL. ``contract`` has no ``encrypt`` mode: purge
  encrypts a row before it NULLs its plaintext. It has no shadow compare: plaintext is being purged.
* ``decrypt`` runs only in ``read_switch`` (DESIGN §5, "Rollback"): there every instance writes
  plaintext again, so the restore converges under traffic; in ``contract`` or ``finalized`` an
  instance writes ciphertext only, so a restored plaintext would go stale at once. Rolling back
  ``finalized`` is the contract revision's Alembic downgrade (which re-adds nullable plaintext
  columns), ``finalized -> contract``, ``contract -> read_switch``, then ``dualwrite backfill
  --mode decrypt``; the backfiller checks the columns exist.
* ``finalized -> contract`` is a legal backward move, guarded by ``plaintext_columns_present``
  (so: downgrade first). Every other move out of ``finalized`` is refused.
* Backward moves, like forward ones, go one step at a time. Their guards follow from the table
  (out of a phase without plaintext columns or one that does not write plaintext:
  ``plaintext_columns_present``; into a phase that reads plaintext: ``plaintext_complete``; from
  reading ciphertext to reading plaintext: ``plaintext_verified``, a full verification with 0
  mismatches and 0 undecryptable rows (missing ciphertexts are fine: the plaintext is newer
  there) that started after the fleet observed the current phase and after the last decrypt
  pass; out of one that NULLs plaintext: every live instance observed it; out of one that writes
  plaintext: no live instance still runs a phase that does not, which is DESIGN's "re-checked
  once every instance has stopped writing NULL plaintext"):

  - ``finalized -> contract``: ``plaintext_columns_present``
  - ``contract -> read_switch``: ``plaintext_columns_present``, ``fleet_observed_contract``
    (reads stay on ciphertext: no complete plaintext needed yet)
  - ``read_switch -> backfill``: ``plaintext_complete``, ``plaintext_verified``,
    ``fleet_writes_plaintext``
  - ``backfill -> dual_write``, ``dual_write -> plaintext``: ``plaintext_complete``,
    ``fleet_writes_plaintext``
* "Instance observed phase X" means its ``observed_version >= facts.state_version``: it has read
  this very state row version. A fleet guard passes when no instance is live.
* "After" is strict and counts from a verification's *start*: it must start after
  ``backfill_finished_at`` (forward) or after the fleet observed the phase and the last decrypt
  pass (backward); a latency gate must finish after ``phase_changed_at``.
  Liveness follows each instance's own interval: live while
  ``now - last_seen < 3 * its poll_interval``; a vanished instance blocks for its grace
  (:func:`~dualwrite.phases.facts.grace_seconds`) unless forgotten.
* :meth:`Phase.parse` accepts any case and ``-`` for ``_``; :meth:`BackfillMode.parse` raises a
  plain :class:`ValueError` (not a ``DualwriteError``) for an unknown mode name.
"""

from dualwrite.phases.facts import (
    Facts,
    GateView,
    InstanceView,
    TriggerView,
    VerificationView,
    grace_seconds,
    live_instances,
    liveness_window_seconds,
    vanished_instances,
)
from dualwrite.phases.guards import Decision, Guard, GuardResult
from dualwrite.phases.model import (
    BEHAVIOURS,
    BackfillMode,
    Behaviour,
    Direction,
    Phase,
    ReadSource,
    backfill_mode_allowed,
    behaviour,
    classify_move,
    next_phase,
    previous_phase,
    require_backfill_mode,
)
from dualwrite.phases.policy import evaluate, guards_for

__all__ = [
    "BEHAVIOURS",
    "BackfillMode",
    "Behaviour",
    "Decision",
    "Direction",
    "Facts",
    "GateView",
    "Guard",
    "GuardResult",
    "InstanceView",
    "Phase",
    "ReadSource",
    "TriggerView",
    "VerificationView",
    "backfill_mode_allowed",
    "behaviour",
    "classify_move",
    "evaluate",
    "grace_seconds",
    "guards_for",
    "live_instances",
    "liveness_window_seconds",
    "next_phase",
    "previous_phase",
    "require_backfill_mode",
    "vanished_instances",
]
