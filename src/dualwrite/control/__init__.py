"""Gather facts -> decide (:mod:`dualwrite.phases`) -> apply; reports; backfill knobs; the gate.

* :mod:`~dualwrite.control.facts` -- a :class:`~dualwrite.phases.Facts` snapshot from the database;
* :mod:`~dualwrite.control.transitions` -- :func:`change_phase`, :func:`decide` (the rules);
* :mod:`~dualwrite.control.apply` -- CAS + audit + NOTIFY, audited refusals;
* :mod:`~dualwrite.control.finalize` -- the contract revision, forward and back;
* :mod:`~dualwrite.control.purge` -- after finalize: the table rewrite, then the remanence scan;
* :mod:`~dualwrite.control.knobs` -- pause, resume and tune a running backfill;
* :mod:`~dualwrite.control.report` -- the status report of one migration;
* :mod:`~dualwrite.control.gate` -- the Locust latency gate.
"""

from dualwrite.control.transitions import change_phase, decide

__all__ = ["change_phase", "decide"]
