"""dualwrite's state in PostgreSQL, one module per table (the caller owns the transaction).

* :mod:`~dualwrite.state.registry` -- ``dualwrite_migrations``: the phase row, changed only by
  compare-and-swap; backfill knobs;
* :mod:`~dualwrite.state.audit_log` -- ``dualwrite_audit``;
* :mod:`~dualwrite.state.fleet` -- ``dualwrite_instances``: heartbeats;
* :mod:`~dualwrite.state.read_events` -- ``dualwrite_read_events``: shadow mismatches, fallbacks;
* :mod:`~dualwrite.state.checkpoints` -- ``dualwrite_checkpoints``: every checkpoint statement;
* :mod:`~dualwrite.state.results` -- ``dualwrite_verifications``, ``dualwrite_gate_results``.
"""
