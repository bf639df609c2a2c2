"""``bench.py chaos``: the randomized fault test as a soak (see :mod:`tests.chaos`).

Runs seeds one after another on one rig (a PostgreSQL server of its own, the API instances,
warm spares for more processes) until ``--seconds`` have passed; every seed runs
``--seed-seconds`` of chaos with no limit on process kills, then converges and checks. Prints
each seed's figure line on stderr and one JSON object with the totals, the seeds that failed
and their first violations.

    uv run python loadtests/bench.py chaos --seconds 600 --json
    uv run python loadtests/bench.py chaos --seconds 60 --first-seed 42
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=600.0, help="how long to soak")
    parser.add_argument("--seed-seconds", type=float, default=15.0, help="chaos per seed")
    parser.add_argument("--first-seed", type=int, default=None, help="default: from the clock")


def run(args: argparse.Namespace) -> dict[str, Any]:
    os.chdir(ROOT)  # alembic.ini, the reference revisions
    first = args.first_seed if args.first_seed is not None else int(time.time()) % 1_000_000
    return asyncio.run(_soak(args.seconds, args.seed_seconds, first))


async def _soak(seconds: float, seed_seconds: float, first: int) -> dict[str, Any]:
    from tests.chaos.driver import run_seed
    from tests.chaos.rig import open_rig

    totals = dict.fromkeys(
        ("attempted", "acknowledged", "present", "moves", "kills", "restarts"), 0
    )
    failed: dict[str, list[str]] = {}
    seeds: list[int] = []
    started = time.monotonic()
    async with open_rig() as rig:
        seed = first
        while time.monotonic() - started < seconds:
            left = seconds - (time.monotonic() - started)
            with contextlib.redirect_stdout(io.StringIO()):
                result = await run_seed(rig, seed, min(seed_seconds, max(left, 1.0)), None)
            print(result.figure(), file=sys.stderr, flush=True)
            seeds.append(seed)
            for key in totals:
                totals[key] += getattr(result, key)
            if not result.ok:
                failed[str(seed)] = (result.failures + result.problems)[:5]
                print(result.render(), file=sys.stderr, flush=True)
            seed += 1
    return {
        "seeds": len(seeds),
        "first_seed": first,
        "writes_attempted": totals["attempted"],
        "writes_acknowledged": totals["acknowledged"],
        "writes_present": totals["present"],
        "moves": totals["moves"],
        "kills": totals["kills"],
        "restarts": totals["restarts"],
        "seconds": round(time.monotonic() - started, 1),
        "failed_seeds": failed,
        "figure": (
            f"chaos: seeds={len(seeds)} writes attempted={totals['attempted']} "
            f"acknowledged={totals['acknowledged']} present={totals['present']} "
            f"moves={totals['moves']} kills={totals['kills']} restarts={totals['restarts']} "
            f"seconds={time.monotonic() - started:.0f}"
        ),
    }
