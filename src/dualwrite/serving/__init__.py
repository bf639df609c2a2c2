"""Several worker processes behind one command: ``dualwrite serve --workers N`` (HTTP workers
sharing one listening socket) and ``dualwrite backfill --workers N`` (one shard each).

:mod:`~dualwrite.serving.supervisor` starts, reaps and restarts the workers and keeps the
Prometheus totals right (multiprocess mode, dead workers marked);
:mod:`~dualwrite.serving.worker` is one HTTP worker (uvicorn on the inherited socket).
"""

from __future__ import annotations

from dualwrite.serving.supervisor import STARTUP_FAILURE, Supervisor, WorkerSpec

__all__ = ["STARTUP_FAILURE", "Supervisor", "WorkerSpec"]
