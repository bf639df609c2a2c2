"""The database schema dualwrite adds and reads: SQL text, Alembic helpers, the inspector.

* :mod:`~dualwrite.schema.sql` -- PURE: SQL text for the state tables, expand, trigger, contract
  and the predicates every part shares;
* :mod:`~dualwrite.schema.ops` -- Alembic operations (expand/unexpand, contract/uncontract, state
  tables), each with its reverse, for a user's own revisions;
* :mod:`~dualwrite.schema.ddl` -- the online-DDL runner every schema step goes through (short
  lock timeouts and retries, concurrent builds under a watchdog, a resumable journal);
* :mod:`~dualwrite.schema.migrate` -- Alembic driven with an engine (``db upgrade`` stops before
  the contract);
* :mod:`~dualwrite.schema.inspector` -- reads of the live table: columns, trigger, coverage.
"""
