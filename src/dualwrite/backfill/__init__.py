"""The online backfiller: convert every row of a live table, lose no write, resume after a crash.

* :mod:`~dualwrite.backfill.worker` -- :class:`Backfiller`, one worker of one mode (runs, retries,
  checkpoints, accounting);
* :mod:`~dualwrite.backfill.admission` -- the fleet rules a run must pass before it starts
  (the key a ``rekey``/``encrypt`` writes is held by every live instance; ``decrypt`` waits until
  the fleet observes the phase);
* :mod:`~dualwrite.backfill.pipeline` -- one pass over the key space, batches in flight;
* :mod:`~dualwrite.backfill.modes` -- one :class:`~dualwrite.backfill.modes.Strategy` per mode
  (encrypt, decrypt, rekey, purge): what it claims, transforms and writes;
* :mod:`~dualwrite.backfill.sql` -- the claim, write and count statements;
* :mod:`~dualwrite.backfill.throttle` -- knobs, rate limit, database health;
* :mod:`~dualwrite.backfill.progress` -- progress bar or JSON lines.
"""

from dualwrite.backfill.worker import Backfiller, BackfillOptions, BackfillReport

__all__ = ["BackfillOptions", "BackfillReport", "Backfiller"]
