"""The one exception hierarchy of dualwrite.

Every error the framework raises on purpose derives from :class:`DualwriteError`. Messages are
written for operators: one line, what went wrong and what to do, and never plaintext PII or key
material. The CLI prints ``str(error)`` and exits non-zero; the HTTP layers map them to statuses.

>>> try:
...     raise ConfigError("ENCRYPTION_KEY is not valid base64")
... except DualwriteError as exc:
...     print(exc)
ENCRYPTION_KEY is not valid base64
"""

from __future__ import annotations


class DualwriteError(Exception):
    """Base class of every error dualwrite raises on purpose."""


class ConfigError(DualwriteError):
    """Settings or key material are missing or malformed."""


class KeyringError(ConfigError):
    """The keyring cannot be built (bad key, duplicate version, missing current key)."""


class MissingKeyError(DualwriteError):
    """No key is configured, or the key needed for an operation is not held by this process."""


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


class PhaseError(DualwriteError):
    """Base for refused phase operations."""


class UnknownMigrationError(PhaseError):
    """No migration of that name is registered."""


class UnknownPhaseError(PhaseError):
    """The name is not one of the six phases."""


class IllegalTransitionError(PhaseError):
    """The move is not allowed at all (skips a phase, leaves ``finalized``, ...)."""


class GuardsFailedError(PhaseError):
    """The move is allowed in principle but one or more guards fail right now."""

    def __init__(self, message: str, failures: list[str]) -> None:
        self.failures = failures
        super().__init__(message)


class TransitionConflictError(PhaseError):
    """The state changed between read and write (compare-and-swap lost)."""


class ModeNotAllowedError(PhaseError):
    """A backfill mode is not allowed in the migration's current phase."""
