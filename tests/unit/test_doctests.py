"""The examples in the docstrings run as written."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "dualwrite.config",
    "dualwrite.errors",
    "dualwrite.spec",
    "dualwrite.schema_sql",
    "dualwrite.metrics",
    "dualwrite.gate",
    "dualwrite.db",
    "dualwrite.phases",
    "dualwrite.guards",
    "dualwrite.crypto.cipher",
    "dualwrite.crypto.keyring",
    "dualwrite.crypto.providers",
    "dualwrite.admin_models",
    "dualwrite.report",
    "dualwrite.crypto.blind_index",
    "clients_service.seed",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
