"""What an API instance runs: the phase watcher, the field codec, phase-aware statements.

* :mod:`~dualwrite.runtime.watcher` -- :class:`PhaseWatcher`: LISTEN/NOTIFY + polling + heartbeats;
* :mod:`~dualwrite.runtime.codec` -- :class:`FieldCodec`: plain values <-> the columns a phase
  writes and reads;
* :mod:`~dualwrite.runtime.table` -- :class:`EncryptedTable`: Core statements (one per read);
* :mod:`~dualwrite.runtime.reads` -- :class:`PreparedRead`: a read drawn once, run per request.
"""

from dualwrite.runtime.codec import FieldCodec, ReadEventSink, ReadLayout, read_columns
from dualwrite.runtime.reads import PreparedRead
from dualwrite.runtime.table import (
    EncryptedTable,
    plain_table_of,
    plaintext_columns_dropped,
    without_plaintext_columns,
)
from dualwrite.runtime.watcher import PhaseWatcher

__all__ = [
    "EncryptedTable",
    "FieldCodec",
    "PhaseWatcher",
    "PreparedRead",
    "ReadEventSink",
    "ReadLayout",
    "plain_table_of",
    "plaintext_columns_dropped",
    "read_columns",
    "without_plaintext_columns",
]
