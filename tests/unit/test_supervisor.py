"""The worker supervisor with real child processes (tiny Python programs, no database)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client.multiprocess import MultiProcessCollector

from dualwrite.serving import STARTUP_FAILURE, Supervisor, WorkerSpec

WRITE_METRICS = """
import os, sys
from prometheus_client import CollectorRegistry, Counter, Gauge
r = CollectorRegistry()
Counter("jobs", "done", registry=r).inc(int(sys.argv[1]))
Gauge("busy", "1 while busy", registry=r, multiprocess_mode="livemax").set(1)
sys.exit(int(sys.argv[2]))
"""


def child(code: str, *args: str) -> WorkerSpec:
    return WorkerSpec([sys.executable, "-c", code, *args], env=dict(os.environ))


def test_each_worker_is_marked_dead_as_it_exits_and_its_counts_stay(tmp_path: Path) -> None:
    specs = [child(WRITE_METRICS, "3", "0"), child(WRITE_METRICS, "4", "0")]
    supervisor = Supervisor(specs, metrics_dir=tmp_path, restart=False, remove_metrics_dir=False)
    assert supervisor.run() == 0
    assert not list(tmp_path.glob("gauge_live*.db"))  # the live gauges of dead workers go
    families = {
        m.name: m for m in MultiProcessCollector.merge(list(map(str, tmp_path.glob("*.db"))))
    }
    assert [s.value for s in families["jobs"].samples] == [7.0]  # the counts stay summed
    assert "busy" not in families


def test_without_restarts_the_exit_code_is_the_worst_worker_code(tmp_path: Path) -> None:
    specs = [child(WRITE_METRICS, "1", "0"), child(WRITE_METRICS, "1", "2")]
    assert Supervisor(specs, metrics_dir=tmp_path / "m", restart=False).run() == 2
    assert not (tmp_path / "m").exists()  # a directory it owns is removed


def test_a_worker_that_cannot_start_stops_everything_with_code_3(tmp_path: Path) -> None:
    started = time.monotonic()
    specs = [child("import sys; sys.exit(3)"), child("import time; time.sleep(60)")]
    supervisor = Supervisor(specs, metrics_dir=tmp_path, restart=True, grace_seconds=5)
    assert supervisor.run() == STARTUP_FAILURE
    assert time.monotonic() - started < 30  # the sleeping worker was stopped, not waited for


def test_a_crash_loop_gives_up_instead_of_restarting_forever(tmp_path: Path) -> None:
    supervisor = Supervisor(
        [child("import sys; sys.exit(1)")], metrics_dir=tmp_path, restart=True, max_restarts=2
    )
    assert supervisor.run() == 1
    assert len(supervisor.exit_codes) == 1 and supervisor.exit_codes[0] == 1


SUPERVISE = """
import os, sys
from pathlib import Path
from dualwrite.serving import Supervisor, WorkerSpec
stubborn = ("import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "os.write(1, b'up\\\\n'); time.sleep(60)")
polite = "import os, time; os.write(1, b'up\\\\n'); time.sleep(60)"
specs = [WorkerSpec([sys.executable, "-c", c], dict(os.environ)) for c in (stubborn, polite)]
sys.exit(Supervisor(specs, metrics_dir=Path(sys.argv[1]), restart=True, grace_seconds=1).run())
"""


def test_sigterm_stops_the_workers_and_kills_those_that_ignore_it_after_the_grace(
    tmp_path: Path,
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SUPERVISE, str(tmp_path / "m")], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    seen = ""
    while seen.count("up") < 2:  # one write(2) per child: the pipe keeps each line whole
        line = proc.stdout.readline()
        assert line, f"the supervisor exited before both workers were up: {seen!r}"
        seen += line
    assert seen == "up\nup\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0  # stopped on request: not a failure
    assert not (tmp_path / "m").exists()
