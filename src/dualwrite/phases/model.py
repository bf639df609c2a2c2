"""What each phase means, which moves exist (pure): the one place a phase's meaning lives.

Other code asks this module (``behaviour(phase).reads_from``, ``backfill_mode_allowed(phase,
mode)``) instead of comparing phase names. It does no I/O and never reads the clock.

>>> b = behaviour("read_switch")
>>> b.reads_from, b.writes_plaintext, b.fallback_to_plaintext
(<ReadSource.CIPHERTEXT: 'ciphertext'>, True, True)
>>> next_phase(Phase.BACKFILL), previous_phase(Phase.PLAINTEXT)
(<Phase.READ_SWITCH: 'read_switch'>, None)

The choices behind the table are listed in :mod:`dualwrite.phases`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from dualwrite.errors import IllegalTransitionError, ModeNotAllowedError, UnknownPhaseError

__all__ = [
    "BEHAVIOURS",
    "BackfillMode",
    "Behaviour",
    "Direction",
    "Phase",
    "ReadSource",
    "backfill_mode_allowed",
    "behaviour",
    "classify_move",
    "next_phase",
    "previous_phase",
    "require_backfill_mode",
]


class Phase(StrEnum):
    """The six phases, in order.

    >>> Phase.parse("Read-Switch"), Phase.CONTRACT.index
    (<Phase.READ_SWITCH: 'read_switch'>, 4)
    >>> Phase.parse("encrypted")
    Traceback (most recent call last):
    ...
    dualwrite.errors.UnknownPhaseError: unknown phase 'encrypted': expected one of plaintext, \
dual_write, backfill, read_switch, contract, finalized
    """

    PLAINTEXT = "plaintext"
    DUAL_WRITE = "dual_write"
    BACKFILL = "backfill"
    READ_SWITCH = "read_switch"
    CONTRACT = "contract"
    FINALIZED = "finalized"

    @classmethod
    def parse(cls, name: str) -> Phase:
        """The phase named ``name`` (case-insensitive, ``-`` accepted for ``_``)."""
        wanted = name.strip().lower().replace("-", "_") if isinstance(name, str) else None
        for phase in cls:
            if phase.value == wanted:
                return phase
        expected = ", ".join(p.value for p in cls)
        raise UnknownPhaseError(f"unknown phase {name!r}: expected one of {expected}")

    @property
    def index(self) -> int:  # type: ignore[override]  # shadows str.index on purpose
        """Position in the order, 0 (plaintext) to 5 (finalized)."""
        return _ORDER.index(self)


_ORDER: tuple[Phase, ...] = tuple(Phase)


class ReadSource(StrEnum):
    """Where the application reads a field from."""

    PLAINTEXT = "plaintext"
    CIPHERTEXT = "ciphertext"


class BackfillMode(StrEnum):
    """What a backfill run does (DESIGN §7).

    >>> BackfillMode.parse("REKEY")
    <BackfillMode.REKEY: 'rekey'>
    >>> BackfillMode.parse("shred")
    Traceback (most recent call last):
    ...
    ValueError: unknown backfill mode 'shred': expected one of encrypt, decrypt, rekey, purge
    """

    ENCRYPT = "encrypt"
    DECRYPT = "decrypt"
    REKEY = "rekey"
    PURGE = "purge"

    @classmethod
    def parse(cls, name: str) -> BackfillMode:
        """The mode named ``name`` (case-insensitive); a plain ``ValueError`` otherwise."""
        wanted = name.strip().lower() if isinstance(name, str) else None
        for mode in cls:
            if mode.value == wanted:
                return mode
        expected = ", ".join(m.value for m in cls)
        raise ValueError(f"unknown backfill mode {name!r}: expected one of {expected}")


class Direction(StrEnum):
    FORWARD = "forward"
    BACKWARD = "backward"


@dataclass(frozen=True, slots=True)
class Behaviour:
    """What one phase means for writes, reads and the backfiller (a row of DESIGN §5's table).

    >>> behaviour(Phase.READ_SWITCH).describe()["backfill_modes"]
    ['encrypt', 'decrypt', 'rekey']
    """

    phase: Phase
    writes_plaintext: bool  # the app writes real plaintext values
    nulls_plaintext: bool  # the app writes NULL into the (still existing) plaintext columns
    plaintext_column_exists: bool
    writes_ciphertext: bool
    reads_from: ReadSource
    shadow_compare: bool  # a sample of reads also checks the other source
    fallback_to_plaintext: bool  # missing ciphertext -> serve plaintext, counted
    backfill_modes: frozenset[BackfillMode]
    requires_plaintext_complete: bool  # reads plaintext: no ciphertext without current plaintext

    def describe(self) -> dict[str, object]:
        """A JSON-friendly summary (for the admin API); modes in their canonical order."""
        return {
            "phase": self.phase.value,
            "writes_plaintext": self.writes_plaintext,
            "nulls_plaintext": self.nulls_plaintext,
            "plaintext_column_exists": self.plaintext_column_exists,
            "writes_ciphertext": self.writes_ciphertext,
            "reads_from": self.reads_from.value,
            "shadow_compare": self.shadow_compare,
            "fallback_to_plaintext": self.fallback_to_plaintext,
            "backfill_modes": [m.value for m in BackfillMode if m in self.backfill_modes],
            "requires_plaintext_complete": self.requires_plaintext_complete,
        }


_M = BackfillMode


def _row(
    phase: Phase,
    *,
    writes_pt: bool,
    writes_ct: bool,
    reads: ReadSource,
    modes: frozenset[BackfillMode],
    shadow: bool = False,
    fallback: bool = False,
    pt_column: bool = True,
) -> tuple[Phase, Behaviour]:
    """One row of the table: a phase that keeps its plaintext column but no longer writes
    plaintext writes NULL into it; a phase requires complete plaintext iff it reads it."""
    return phase, Behaviour(
        phase=phase,
        writes_plaintext=writes_pt,
        nulls_plaintext=pt_column and not writes_pt,
        plaintext_column_exists=pt_column,
        writes_ciphertext=writes_ct,
        reads_from=reads,
        shadow_compare=shadow,
        fallback_to_plaintext=fallback,
        backfill_modes=modes,
        requires_plaintext_complete=reads is ReadSource.PLAINTEXT,
    )


#: DESIGN §5's table, the single source of what a phase means.
BEHAVIOURS: Mapping[Phase, Behaviour] = MappingProxyType(
    dict(
        [
            _row(
                Phase.PLAINTEXT,
                writes_pt=True, writes_ct=False, reads=ReadSource.PLAINTEXT, modes=frozenset(),
            ),
            _row(
                Phase.DUAL_WRITE,
                writes_pt=True, writes_ct=True, reads=ReadSource.PLAINTEXT, modes=frozenset(),
            ),
            _row(
                Phase.BACKFILL,
                writes_pt=True, writes_ct=True, reads=ReadSource.PLAINTEXT, shadow=True,
                modes=frozenset({_M.ENCRYPT, _M.REKEY}),
            ),
            _row(
                Phase.READ_SWITCH,
                writes_pt=True, writes_ct=True, reads=ReadSource.CIPHERTEXT, shadow=True,
                fallback=True, modes=frozenset({_M.ENCRYPT, _M.REKEY, _M.DECRYPT}),
            ),
            _row(
                Phase.CONTRACT,
                writes_pt=False, writes_ct=True, reads=ReadSource.CIPHERTEXT, fallback=True,
                modes=frozenset({_M.PURGE, _M.REKEY}),
            ),
            _row(
                Phase.FINALIZED,
                writes_pt=False, writes_ct=True, reads=ReadSource.CIPHERTEXT, pt_column=False,
                modes=frozenset({_M.REKEY}),
            ),
        ]
    )
)  # fmt: skip


def behaviour(phase: Phase | str) -> Behaviour:
    """The :class:`Behaviour` of ``phase`` (a name is parsed; unknown -> ``UnknownPhaseError``)."""
    return BEHAVIOURS[Phase.parse(phase)]


def backfill_mode_allowed(phase: Phase | str, mode: BackfillMode | str) -> bool:
    """Whether the backfiller may run ``mode`` in ``phase``.

    >>> backfill_mode_allowed("backfill", "encrypt"), backfill_mode_allowed("backfill", "purge")
    (True, False)
    """
    return BackfillMode.parse(mode) in behaviour(phase).backfill_modes


def require_backfill_mode(phase: Phase | str, mode: BackfillMode | str) -> None:
    """Raise ``ModeNotAllowedError`` unless ``mode`` may run in ``phase``.

    >>> require_backfill_mode("backfill", "purge")
    Traceback (most recent call last):
    ...
    dualwrite.errors.ModeNotAllowedError: backfill mode 'purge' is not allowed in phase \
'backfill' (allowed: encrypt, rekey)
    >>> require_backfill_mode("contract", "decrypt")
    Traceback (most recent call last):
    ...
    dualwrite.errors.ModeNotAllowedError: backfill mode 'decrypt' is not allowed in phase \
'contract' (allowed: rekey, purge): decrypt runs in read_switch, once every instance writes \
plaintext again (move back to read_switch first)
    """
    b, m = behaviour(phase), BackfillMode.parse(mode)
    if m not in b.backfill_modes:
        allowed = ", ".join(x.value for x in BackfillMode if x in b.backfill_modes) or "none"
        hint = ""
        if m is BackfillMode.DECRYPT and b.phase.index > Phase.READ_SWITCH.index:
            hint = (
                ": decrypt runs in read_switch, once every instance writes plaintext again "
                "(move back to read_switch first)"
            )
        raise ModeNotAllowedError(
            f"backfill mode '{m}' is not allowed in phase '{b.phase}' (allowed: {allowed}){hint}"
        )


# --- transitions ------------------------------------------------------------------------------


def next_phase(phase: Phase | str) -> Phase | None:
    """The phase after ``phase``, or ``None`` after ``finalized``."""
    i = Phase.parse(phase).index
    return _ORDER[i + 1] if i + 1 < len(_ORDER) else None


def previous_phase(phase: Phase | str) -> Phase | None:
    """The phase before ``phase``, or ``None`` before ``plaintext``."""
    i = Phase.parse(phase).index
    return _ORDER[i - 1] if i > 0 else None


_FINALIZED_ROLLBACK = (
    "finalized is rolled back by the contract revision's Alembic downgrade, a move back to "
    "contract, then to read_switch, then `dualwrite backfill --mode decrypt`"
)


def classify_move(current: Phase | str, target: Phase | str) -> Direction:
    """Whether ``current -> target`` is a legal forward or backward step; raise otherwise.

    >>> classify_move("plaintext", "dual_write"), classify_move("contract", "read_switch")
    (<Direction.FORWARD: 'forward'>, <Direction.BACKWARD: 'backward'>)
    >>> classify_move("plaintext", "backfill")
    Traceback (most recent call last):
    ...
    dualwrite.errors.IllegalTransitionError: cannot skip from plaintext to backfill: move one \
step at a time (next: dual_write)
    """
    cur, tgt = Phase.parse(current), Phase.parse(target)
    if cur is tgt:
        raise IllegalTransitionError(f"already in {cur}")
    if tgt.index == cur.index + 1:
        return Direction.FORWARD
    if tgt.index == cur.index - 1:
        return Direction.BACKWARD
    if tgt.index > cur.index:
        raise IllegalTransitionError(
            f"cannot skip from {cur} to {tgt}: move one step at a time (next: {next_phase(cur)})"
        )
    hint = _FINALIZED_ROLLBACK if cur is Phase.FINALIZED else "move back one step at a time"
    raise IllegalTransitionError(
        f"cannot skip back from {cur} to {tgt}: {hint} (previous: {previous_phase(cur)})"
    )
