"""The one exception hierarchy of dualwrite, and the one mapping of driver errors.

Every error the framework raises on purpose derives from :class:`DualwriteError`. Messages are
written for operators: one line, what went wrong and what to do, and never plaintext PII or key
material. The CLI prints ``str(error)`` and exits non-zero; the HTTP layers map them to statuses
(:mod:`dualwrite.admin.errors` for the admin API)::

    DualwriteError
    ├── ConfigError                    settings or key material missing/malformed   (500, exit 1)
    │   ├── KeyringError               a keyring that cannot be built
    │   └── UnsupportedTypeError       a column type dualwrite cannot encrypt exactly
    ├── MissingKeyError                a key this operation needs is not held
    │   ├── BlindIndexKeyMissingError  no BLIND_INDEX_KEY, searchable fields need it
    │   └── EncryptionUnavailableError this instance cannot encrypt now          (503)
    ├── DecryptionError                a ciphertext does not decrypt             (500, generic)
    ├── DatabaseUnavailableError       PostgreSQL cannot be reached or started   (503)
    ├── FencedError                    this instance may act under a phase the fleet left:
    │                                  the write was refused, nothing written     (503)
    ├── RequestError                   well-formed input asking nothing sensible (400)
    ├── UnsupportedQueryError          an ORM statement that would read encrypted fields wrongly
    ├── SchemaStepError                an online schema step gave up or refused   (exit 1)
    │   └── DependenciesRemainError    objects still depend on the plaintext columns
    └── PhaseError                     a refused phase operation                 (409 unless below)
        ├── UnknownMigrationError      no such migration                         (404)
        ├── UnknownPhaseError          not one of the six phases                 (400)
        ├── IllegalTransitionError     not one step from the current phase       (409)
        ├── ReasonRequiredError        ``force`` without a reason                (400)
        ├── GuardsFailedError          guards refuse now; ``failures`` lists them (409)
        │   └── BackfillRefusedError   the fleet is not ready for a backfill mode  (409, exit 1)
        ├── TransitionConflictError    a concurrent change won the CAS           (409)
        └── ModeNotAllowedError        a backfill mode the phase does not allow  (409)

Beside the tree: ``PglzError`` (bytes that are not a pglz stream; the remanence scan catches
it and reads what the stream still yields) is a :class:`ValueError` too, and
:class:`dualwrite.schema.ops.ContractRefusedError` lives beside the Alembic operations because
it must also be Alembic's ``CommandError`` (so Alembic's CLI prints it as one ``FAILED:`` line;
this module imports no Alembic).

Lower layers (asyncpg, SQLAlchemy, the OS) are mapped in one place:
:func:`is_connection_lost` decides whether an exception means "the database went away" (retry,
or answer 503) rather than a bug, and :func:`describe` names one in a line that quotes no data
(a driver's message can quote a query argument, which may be plaintext).

>>> try:
...     raise ConfigError("ENCRYPTION_KEY is not valid base64")
... except DualwriteError as exc:
...     print(exc)
ENCRYPTION_KEY is not valid base64
>>> is_connection_lost(ConnectionResetError()), is_connection_lost(ValueError())
(True, False)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

__all__ = [
    "BackfillRefusedError",
    "BlindIndexKeyMissingError",
    "ConfigError",
    "DatabaseUnavailableError",
    "DecryptionError",
    "DependenciesRemainError",
    "DualwriteError",
    "EncryptionUnavailableError",
    "FencedError",
    "GuardsFailedError",
    "IllegalTransitionError",
    "KeyringError",
    "MissingKeyError",
    "ModeNotAllowedError",
    "PglzError",
    "PhaseError",
    "ReasonRequiredError",
    "Refusal",
    "RequestError",
    "SchemaStepError",
    "TransitionConflictError",
    "UnknownMigrationError",
    "UnknownPhaseError",
    "UnsupportedQueryError",
    "UnsupportedTypeError",
    "describe",
    "is_connection_lost",
]


class DualwriteError(Exception):
    """Base class of every error dualwrite raises on purpose."""


class ConfigError(DualwriteError):
    """Settings or key material are missing or malformed."""


class KeyringError(ConfigError):
    """The keyring cannot be built (bad key, duplicate version, missing current key)."""


class UnsupportedTypeError(ConfigError, ValueError):
    """A column type whose values dualwrite cannot encrypt exactly (``json``, floating point,
    anything not listed in :mod:`dualwrite.crypto.values`)."""


class UnsupportedQueryError(DualwriteError):
    """An ORM statement on an encrypted model that cannot be answered right in every phase
    (bulk insert/update methods, a column-only select of an encrypted field, ``LIKE``/ordering
    on one, equality on a field without ``search``). Raised before anything runs."""


class MissingKeyError(DualwriteError):
    """No key is configured, or the key needed for an operation is not held by this process."""


class BlindIndexKeyMissingError(MissingKeyError):
    """No blind-index key is configured, and searchable fields need one."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(
            message
            or "no blind index key configured: set BLIND_INDEX_KEY (searchable fields need it; "
            "make one with `dualwrite keys generate --blind-index`)"
        )


class EncryptionUnavailableError(MissingKeyError):
    """This instance cannot encrypt (or decrypt) right now; the operation was refused.

    Raised *before* anything is written, so no plaintext-only row can appear in a phase that
    requires ciphertext. The HTTP layer answers 503.
    """


class DecryptionError(DualwriteError):
    """A ciphertext could not be decrypted.

    Names the table, column and key version but never the plaintext, the ciphertext or the key.
    """

    def __init__(self, table: str, column: str, version: str | None, why: str) -> None:
        self.table = table
        self.column = column
        self.version = version
        self.why = why
        shown = version if version is not None else "unknown"
        super().__init__(f"cannot decrypt {table}.{column} (key version {shown}): {why}")


class DatabaseUnavailableError(DualwriteError):
    """PostgreSQL cannot be reached or started."""


class FencedError(DualwriteError):
    """A write (or backfill batch) refused itself: the state version it acts under is no
    longer current, its watcher's last successful refresh is older than its liveness window,
    or its current key is one a live instance of the fleet does not hold. Raised inside the
    write's transaction before anything is written; the HTTP layer answers 503 (retry).

    ``stale`` is true when only the snapshot was behind (the instance itself is healthy): the
    write may be retried at once in a new transaction under a fresh snapshot."""

    def __init__(self, message: str, *, stale: bool = False) -> None:
        self.stale = stale
        super().__init__(message)


class RequestError(DualwriteError):
    """A request that is well-formed but asks for nothing sensible (HTTP 400)."""


class SchemaStepError(DualwriteError):
    """An online schema step could not complete: it gave up waiting for a lock (naming who
    held it), a concurrent build passed its deadline, or the data refused it (a fence found
    plaintext). What it finished is recorded; running the same command again resumes."""


class DependenciesRemainError(SchemaStepError):
    """Objects still depend on the plaintext columns (views, policies, indexes, ...); nothing
    was changed. ``dependencies`` lists them, one description each."""

    def __init__(self, message: str, dependencies: Sequence[str]) -> None:
        self.dependencies: tuple[str, ...] = tuple(dependencies)
        super().__init__(message)


class PhaseError(DualwriteError):
    """Base for refused phase operations."""


class UnknownMigrationError(PhaseError):
    """No migration of that name is registered."""


class UnknownPhaseError(PhaseError):
    """The name is not one of the six phases."""


class IllegalTransitionError(PhaseError):
    """The move is not allowed at all (skips a phase, leaves ``finalized``, ...)."""


class ReasonRequiredError(PhaseError):
    """``force`` was asked for without a reason (the audit log must say why)."""


class Refusal(Protocol):
    """What a guard failure carries (``dualwrite.phases.GuardResult`` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def reason(self) -> str: ...


class GuardsFailedError(PhaseError):
    """The move is allowed in principle but one or more guards fail right now.

    ``failures`` holds the failing guard results (each with a ``name`` and a ``reason``).
    """

    def __init__(self, message: str, failures: Sequence[Refusal]) -> None:
        self.failures: tuple[Refusal, ...] = tuple(failures)
        super().__init__(message)


class BackfillRefusedError(GuardsFailedError):
    """A backfill run refused before it touched a row because the fleet is not ready for its
    mode (a live instance lacks the key a ``rekey``/``encrypt`` writes, or has not observed the
    phase a ``decrypt`` needs); ``failures`` names the rule and the instances."""


class TransitionConflictError(PhaseError):
    """The state changed between read and write (compare-and-swap lost)."""


class ModeNotAllowedError(PhaseError):
    """A backfill mode is not allowed in the migration's current phase."""


class PglzError(DualwriteError, ValueError):
    """The bytes are not a valid pglz stream of that size (remanence scan)."""


def is_connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` means the database went away (retry, or answer 503), not a bug.

    Covers the OS (refused/reset connections, timeouts), asyncpg (connection errors, an
    administrator's shutdown, a server still starting) and SQLAlchemy (an invalidated
    connection, ``InterfaceError``/``OperationalError``), looking through SQLAlchemy's wrapper
    at the driver's own exception.
    """
    if isinstance(exc, OSError | ConnectionError | TimeoutError):
        return True
    import asyncpg
    from sqlalchemy import exc as sa_exc

    kinds = (
        asyncpg.PostgresConnectionError,
        asyncpg.InterfaceError,
        asyncpg.exceptions.OperatorInterventionError,
        asyncpg.exceptions.CannotConnectNowError,
        sa_exc.InterfaceError,
        sa_exc.OperationalError,
    )
    if isinstance(exc, kinds):
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    # asyncpg raises this on a connection whose server sent FATAL (a shutdown, a terminated
    # backend) while it sat idle: the next statement finds the protocol still consuming it
    if isinstance(exc, asyncpg.InternalClientError) and "another operation" in str(exc):
        return True
    orig = getattr(exc, "orig", None)
    return isinstance(orig, BaseException) and orig is not exc and is_connection_lost(orig)


_ARGUMENT = re.compile(r"(query argument \$\d+)\b.*", re.DOTALL)


def describe(exc: BaseException) -> str:
    """One line naming a lower-layer error without the data it may quote.

    Only the first line is kept (PostgreSQL's ``DETAIL: Key (email)=(...)`` and ``Failing row
    contains (...)`` follow on later lines), and asyncpg's ``invalid input for query argument
    $1: <the value>`` loses the value.

    >>> describe(ValueError("invalid input for query argument $2: 'ada@example.org' (bad)"))
    'ValueError: invalid input for query argument $2 (value not shown)'
    >>> describe(KeyError())
    'KeyError'
    """
    lines = str(exc).strip().splitlines()
    first = _ARGUMENT.sub(r"\1 (value not shown)", lines[0]) if lines else ""
    return f"{type(exc).__name__}: {first}"[:300] if first else type(exc).__name__
