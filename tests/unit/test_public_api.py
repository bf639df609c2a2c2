"""``dualwrite``'s public face: a curated, sorted ``__all__`` whose every name resolves."""

from __future__ import annotations

import subprocess
import sys

import pytest

import dualwrite

EXPECTED = {
    # the schema and phase model
    "MigrationSpec", "FieldSpec", "Phase", "Behaviour", "BackfillMode", "behaviour",
    # what an API instance runs
    "EncryptedTable", "FieldCodec", "PhaseWatcher", "Metrics", "Settings", "load_settings",
    "admin_router", "AdminContext",
    # the ORM hook
    "encrypted", "EncryptedModel",
    # keys
    "BlindIndex", "DataKey", "FieldCipher", "Keyring", "load_keyring",
    # operations
    "Backfiller", "BackfillOptions", "BackfillReport", "verify", "VerificationReport",
    "change_phase", "decide",
    # the error hierarchy
    "DualwriteError", "ConfigError", "KeyringError", "MissingKeyError",
    "BlindIndexKeyMissingError", "EncryptionUnavailableError", "DecryptionError",
    "DatabaseUnavailableError", "RequestError", "PhaseError", "UnknownMigrationError",
    "UnknownPhaseError", "IllegalTransitionError", "ReasonRequiredError", "GuardsFailedError",
    "TransitionConflictError", "ModeNotAllowedError", "BackfillRefusedError",
    "UnsupportedQueryError", "UnsupportedTypeError", "SchemaStepError", "DependenciesRemainError",
    "FencedError",
}  # fmt: skip


def test_all_is_sorted_and_curated() -> None:
    assert dualwrite.__all__ == sorted(dualwrite.__all__)
    assert set(dualwrite.__all__) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_name_resolves(name: str) -> None:
    value = getattr(dualwrite, name)
    assert getattr(value, "__module__", "dualwrite").startswith("dualwrite")


def test_every_error_is_a_dualwrite_error() -> None:
    errors = [getattr(dualwrite, n) for n in dualwrite.__all__ if n.endswith("Error")]
    assert all(issubclass(e, dualwrite.DualwriteError) for e in errors)


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError):
        dualwrite.NoSuchThing  # noqa: B018


def test_importing_the_package_loads_no_heavy_dependency() -> None:
    code = (
        "import sys, dualwrite; "
        "print(sorted(m for m in ('sqlalchemy', 'fastapi') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
