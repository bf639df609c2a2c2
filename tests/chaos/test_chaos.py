"""The randomized fault test, short form: 20 seeds of a few seconds each on one shared rig
(server, database, API instances), each printing its figure line.

Rerun one seed: ``DUALWRITE_CHAOS_SEED=S uv run pytest tests/chaos -q -s``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.chaos.driver import run_seed, seed_from_env
from tests.chaos.rig import Rig, open_rig

pytestmark = pytest.mark.e2e

SEEDS = seed_from_env([9001 + 7 * n for n in range(20)])
SECONDS = 1.2


@pytest.fixture(scope="module")
async def rig() -> AsyncIterator[Rig]:
    async with open_rig() as r:
        yield r


@pytest.mark.parametrize("seed", SEEDS)
async def test_chaos_seed(rig: Rig, seed: int) -> None:
    result = await run_seed(rig, seed, SECONDS)
    print(result.render())
    assert result.ok, result.render()
    assert result.present == result.acknowledged, result.render()
