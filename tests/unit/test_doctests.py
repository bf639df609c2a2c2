"""The examples in every module's docstrings run as written (collected, not a hand-kept list)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import clients_service
import dualwrite

PACKAGES = (dualwrite, clients_service)


def all_modules() -> list[str]:
    names = []
    for package in PACKAGES:
        names.append(package.__name__)
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name.rsplit(".", 1)[-1] != "__main__":  # runs the CLI when imported
                names.append(info.name)
    return sorted(names)


MODULES = all_modules()


def test_every_module_is_collected() -> None:
    assert len(MODULES) > 60
    assert {"dualwrite.backfill.modes", "dualwrite.control.report", "clients_service.seed"} <= set(
        MODULES
    )


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
