"""dualwrite: encrypt PII/PHI columns of a live PostgreSQL table with zero downtime.

The public face. Everything an application or an operator script needs is importable from
here; the subpackages are the implementation (their layout is drawn in the README)::

    from dualwrite import EncryptedTable, FieldCodec, FieldSpec, MigrationSpec, PhaseWatcher

    PATIENTS_PII = MigrationSpec(
        name="patients_pii", table="patients",
        fields=(FieldSpec("email", blind_index="email"), FieldSpec("date_of_birth")),
    )

Names resolve on first use (``import dualwrite`` stays cheap: the CLI's ``--help`` does not
load SQLAlchemy or FastAPI). Every error class derives from :class:`DualwriteError`; the
hierarchy is drawn in :mod:`dualwrite.errors`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dualwrite.admin import AdminContext, admin_router
    from dualwrite.backfill import Backfiller, BackfillOptions, BackfillReport
    from dualwrite.config import Settings, load_settings
    from dualwrite.control import change_phase, decide
    from dualwrite.crypto import BlindIndex, DataKey, FieldCipher, Keyring, load_keyring
    from dualwrite.errors import (
        BackfillRefusedError,
        BlindIndexKeyMissingError,
        ConfigError,
        DatabaseUnavailableError,
        DecryptionError,
        DependenciesRemainError,
        DualwriteError,
        EncryptionUnavailableError,
        FencedError,
        GuardsFailedError,
        IllegalTransitionError,
        KeyringError,
        MissingKeyError,
        ModeNotAllowedError,
        PhaseError,
        ReasonRequiredError,
        RequestError,
        SchemaStepError,
        TransitionConflictError,
        UnknownMigrationError,
        UnknownPhaseError,
        UnsupportedQueryError,
        UnsupportedTypeError,
    )
    from dualwrite.metrics import Metrics
    from dualwrite.phases import BackfillMode, Behaviour, Phase, behaviour
    from dualwrite.runtime import EncryptedTable, FieldCodec, PhaseWatcher
    from dualwrite.runtime.orm import EncryptedModel, encrypted
    from dualwrite.spec import FieldSpec, MigrationSpec
    from dualwrite.verify import VerificationReport, verify

_WHERE = {
    "dualwrite.admin": ("AdminContext", "admin_router"),
    "dualwrite.backfill": ("BackfillOptions", "BackfillReport", "Backfiller"),
    "dualwrite.config": ("Settings", "load_settings"),
    "dualwrite.control": ("change_phase", "decide"),
    "dualwrite.crypto": ("BlindIndex", "DataKey", "FieldCipher", "Keyring", "load_keyring"),
    "dualwrite.errors": (
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
        "PhaseError",
        "ReasonRequiredError",
        "RequestError",
        "SchemaStepError",
        "TransitionConflictError",
        "UnknownMigrationError",
        "UnknownPhaseError",
        "UnsupportedQueryError",
        "UnsupportedTypeError",
    ),
    "dualwrite.metrics": ("Metrics",),
    "dualwrite.phases": ("BackfillMode", "Behaviour", "Phase", "behaviour"),
    "dualwrite.runtime": ("EncryptedTable", "FieldCodec", "PhaseWatcher"),
    "dualwrite.runtime.orm": ("EncryptedModel", "encrypted"),
    "dualwrite.spec": ("FieldSpec", "MigrationSpec"),
    "dualwrite.verify": ("VerificationReport", "verify"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}

__all__ = [
    "AdminContext",
    "BackfillMode",
    "BackfillOptions",
    "BackfillRefusedError",
    "BackfillReport",
    "Backfiller",
    "Behaviour",
    "BlindIndex",
    "BlindIndexKeyMissingError",
    "ConfigError",
    "DataKey",
    "DatabaseUnavailableError",
    "DecryptionError",
    "DependenciesRemainError",
    "DualwriteError",
    "EncryptedModel",
    "EncryptedTable",
    "EncryptionUnavailableError",
    "FencedError",
    "FieldCipher",
    "FieldCodec",
    "FieldSpec",
    "GuardsFailedError",
    "IllegalTransitionError",
    "Keyring",
    "KeyringError",
    "Metrics",
    "MigrationSpec",
    "MissingKeyError",
    "ModeNotAllowedError",
    "Phase",
    "PhaseError",
    "PhaseWatcher",
    "ReasonRequiredError",
    "RequestError",
    "SchemaStepError",
    "Settings",
    "TransitionConflictError",
    "UnknownMigrationError",
    "UnknownPhaseError",
    "UnsupportedQueryError",
    "UnsupportedTypeError",
    "VerificationReport",
    "admin_router",
    "behaviour",
    "change_phase",
    "decide",
    "encrypted",
    "load_keyring",
    "load_settings",
    "verify",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'dualwrite' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
