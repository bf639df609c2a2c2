"""Correct totals when one instance runs several worker processes (prometheus-client's
multiprocess mode).

With ``PROMETHEUS_MULTIPROC_DIR`` set in a worker's environment *before it starts*, every
metric value lives in a small per-process file in that directory; whichever worker answers a
scrape reads all the files and exports the aggregate: counters and histograms summed (a dead
worker's counts stay in the totals), each gauge combined as its ``multiprocess_mode`` says.
The process that starts the workers owns the directory: it empties it before the first worker
starts (:func:`prepare`), calls :func:`mark_dead` for every worker it reaps (so the live gauges of
a dead worker disappear) and removes it at the end. ``dualwrite serve --workers N`` and
``dualwrite backfill --workers N`` do all of this (:mod:`dualwrite.serving`).

Without the variable (tests, one worker, ``backfill --metrics-port``) :func:`exposition` is
the plain text of the process's own registry.

>>> import tempfile
>>> from prometheus_client import CollectorRegistry
>>> exposition(CollectorRegistry()) == b""          # not in multiprocess mode: own registry
True
>>> with tempfile.TemporaryDirectory() as d:
...     prepare(Path(d)); aggregate_registry(Path(d)).collect() is not None
True
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

__all__ = ["ENV", "active_dir", "aggregate_registry", "exposition", "mark_dead", "prepare"]

ENV = "PROMETHEUS_MULTIPROC_DIR"


def active_dir() -> Path | None:
    """The multiprocess directory of this process, or ``None`` (single-process mode)."""
    value = os.environ.get(ENV) or os.environ.get(ENV.lower())
    return Path(value) if value else None


def aggregate_registry(path: Path) -> CollectorRegistry:
    """A registry that reads every worker's files in ``path`` at each collect."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))  # type: ignore[no-untyped-call]
    return registry


def exposition(own: CollectorRegistry) -> bytes:
    """The text format: the aggregate of all workers in multiprocess mode, else ``own``."""
    path = active_dir()
    return generate_latest(aggregate_registry(path) if path is not None else own)


def prepare(path: Path) -> None:
    """Create ``path`` if needed and remove the value files a previous run left there."""
    path.mkdir(parents=True, exist_ok=True)
    for leftover in path.glob("*.db"):
        leftover.unlink(missing_ok=True)


def mark_dead(pid: int, path: Path) -> None:
    """Forget the live gauges of worker ``pid`` (its counters stay in the totals)."""
    mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]
