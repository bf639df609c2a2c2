"""The randomized fault test of the whole data path (seeded, reproducible, real processes).

* :mod:`tests.chaos.procs` -- ``dualwrite`` commands as real processes, started from warm spares;
* :mod:`tests.chaos.model` -- every write the driver attempted, what was acknowledged, the check;
* :mod:`tests.chaos.rig` -- the server, database, API instances and phase moves one run shares;
* :mod:`tests.chaos.driver` -- one seed: writers, faults and moves, then converge and check.

``uv run python loadtests/bench.py chaos --seconds N --json`` runs seeds back to back (a soak).
Its short form is not part of the suite yet: with the fleet's self-fencing and grace rules the
driver's phase moves are refused (every seed reports ``moves=0``) and each seed waits ~20 s for
its start phase, so it proves neither the moves nor fits the suite's time.
"""
