"""A small process supervisor: start N worker processes, reap them, keep the metrics right.

uvicorn's own ``--workers`` manager has no hook when a worker exits, and prometheus-client's
multiprocess mode needs one (``mark_process_dead``), so dualwrite runs its workers itself:

* the supervisor owns the metrics directory (emptied at start, removed at the end) and hands it
  to every worker as ``PROMETHEUS_MULTIPROC_DIR``;
* it polls its children (every 0.1 s); a reaped worker is marked dead for the metrics at once
  (its live gauges go; its counters stay in the totals), then restarted when ``restart`` is on;
* a worker exiting with :data:`STARTUP_FAILURE` (3, uvicorn's code for a lifespan that failed,
  e.g. the database is unreachable) stops everything with that code instead of a restart loop,
  and so do more than ``max_restarts`` restarts within ``restart_window`` seconds (code 1);
* SIGTERM / SIGINT are forwarded (``forward`` chooses the signal sent on), then after
  ``grace_seconds`` the remaining workers are killed; a second signal kills them at once.

>>> spec = WorkerSpec(["python", "-c", "pass"], env={})
>>> Supervisor([spec], metrics_dir=Path("/tmp/m"), restart=False).restart
False
"""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from dualwrite.metrics import multiprocess

__all__ = ["STARTUP_FAILURE", "Supervisor", "WorkerSpec"]

log = logging.getLogger("dualwrite.serving")

STARTUP_FAILURE = 3
"""A worker's exit code for "could not start" (uvicorn's ``STARTUP_FAILURE``)."""


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """How to start one worker: its command line, environment and inherited descriptors."""

    argv: Sequence[str]
    env: Mapping[str, str]
    pass_fds: tuple[int, ...] = ()
    new_session: bool = False  # its own session: terminal signals reach only the supervisor


@dataclass(slots=True)
class _Child:
    index: int
    proc: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)


class Supervisor:
    """Run ``specs`` (one process each) until they end or a signal stops them; see the module
    docstring. :meth:`run` returns the exit code for the command."""

    def __init__(
        self,
        specs: Sequence[WorkerSpec],
        *,
        metrics_dir: Path,
        restart: bool,
        remove_metrics_dir: bool = True,
        grace_seconds: float | None = 30.0,
        forward: Callable[[int], int] = lambda sig: sig,
        max_restarts: int = 5,
        restart_window: float = 60.0,
    ) -> None:
        self.specs = list(specs)
        self.metrics_dir = metrics_dir
        self.restart = restart
        self.remove_metrics_dir = remove_metrics_dir
        self.grace_seconds = grace_seconds
        self.forward = forward
        self.max_restarts = max_restarts
        self.restart_window = restart_window
        self.children: dict[int, _Child] = {}
        self.exit_codes: dict[int, int] = {}
        self._restarts: deque[float] = deque()
        self._stop_at: float | None = None
        self._signals = 0
        self._fatal: int | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def run(self) -> int:
        """Start every worker, supervise until all have exited, clean up; the exit code."""
        multiprocess.prepare(self.metrics_dir)
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for index in range(len(self.specs)):
                self._start(index)
            while self.children:
                self._reap()
                if self._stop_at is not None and time.monotonic() >= self._stop_at:
                    self._kill_all("did not stop within the grace period")
                time.sleep(0.1)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._kill_all("supervisor exiting")
            for child in list(self.children.values()):
                child.proc.wait()
                multiprocess.mark_dead(child.proc.pid, self.metrics_dir)
            if self.remove_metrics_dir:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)
        return self._exit_code()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Ask every worker to stop (what SIGTERM does); they are killed after the grace."""
        if self._stop_at is None:
            grace = self.grace_seconds
            self._stop_at = time.monotonic() + grace if grace is not None else float("inf")
        for child in self.children.values():
            _send(child.proc, self.forward(sig))

    # --- internals ------------------------------------------------------------------------

    def _exit_code(self) -> int:
        if self._fatal is not None:
            return self._fatal
        if self.restart:
            return 0
        return max(self.exit_codes.values(), default=0)

    def _on_signal(self, sig: int, _frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            self._kill_all("second signal")
        else:
            self.stop(sig)

    def _start(self, index: int) -> None:
        spec = self.specs[index]
        env = {**spec.env, multiprocess.ENV: str(self.metrics_dir)}
        proc = subprocess.Popen(
            list(spec.argv), env=env, pass_fds=spec.pass_fds, start_new_session=spec.new_session
        )
        self.children[proc.pid] = _Child(index, proc)
        log.info("worker %d started (pid %d)", index, proc.pid)

    def _reap(self) -> None:
        for pid, child in list(self.children.items()):
            code = child.proc.poll()
            if code is None:
                continue
            del self.children[pid]
            multiprocess.mark_dead(pid, self.metrics_dir)
            self.exit_codes[child.index] = code
            if self._stop_at is not None:
                continue
            if not self.restart:
                if code != 0:
                    log.warning("worker %d (pid %d) exited with code %d", child.index, pid, code)
                continue
            self._after_unexpected_exit(child, code)

    def _after_unexpected_exit(self, child: _Child, code: int) -> None:
        if code == STARTUP_FAILURE:
            log.error("worker %d could not start (exit %d): stopping", child.index, code)
            self._fatal = STARTUP_FAILURE
            self.stop()
            return
        now = time.monotonic()
        self._restarts.append(now)
        while self._restarts and now - self._restarts[0] > self.restart_window:
            self._restarts.popleft()
        if len(self._restarts) > self.max_restarts:
            log.error(
                "workers exited %d times within %.0fs (last: worker %d, code %d): stopping",
                len(self._restarts),
                self.restart_window,
                child.index,
                code,
            )
            self._fatal = 1
            self.stop()
            return
        log.warning(
            "worker %d (pid %d) exited with code %d: restarting it",
            child.index,
            child.proc.pid,
            code,
        )
        self._start(child.index)

    def _kill_all(self, why: str) -> None:
        for child in self.children.values():
            if child.proc.poll() is None:
                log.warning("killing worker %d (pid %d): %s", child.index, child.proc.pid, why)
                child.proc.kill()


def _send(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
