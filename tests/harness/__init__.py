"""The shared fault-test harness: real processes, real PostgreSQL, real faults (no mocks).

* :mod:`tests.harness.server` -- an embedded PostgreSQL a test owns (so it may stop/restart it);
* :mod:`tests.harness.processes` -- dualwrite commands as subprocesses, environment, SIGKILL;
* :mod:`tests.harness.locks` -- a session holding a lock or an open transaction on a table, and
  a prober that measures how long live reads wait;
* :mod:`tests.harness.service` -- the reference API as ``dualwrite serve`` on a loopback port.
* :mod:`tests.harness.steps` -- a schema operation stopped at a chosen step (to kill it there).

Later fault tests add modules here (one file per kind of fault) instead of private copies.
"""
