"""The randomized fault test of the whole data path (seeded, reproducible, real processes).

* :mod:`tests.chaos.procs` -- ``dualwrite`` commands as real processes, started from warm spares;
* :mod:`tests.chaos.model` -- every write the driver attempted, what was acknowledged, the check;
* :mod:`tests.chaos.rig` -- the server, database, API instances and phase moves one run shares;
* :mod:`tests.chaos.driver` -- one seed: writers, faults and moves, then converge and check;
* :mod:`tests.chaos.test_chaos` -- the short form in the suite: 20 seeds, then a check that
  the run moved the phase both ways.

``uv run python loadtests/bench.py chaos --seconds N --json`` runs seeds back to back (a soak).
"""
