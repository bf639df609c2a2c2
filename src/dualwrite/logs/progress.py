"""The backfill events that a worker's progress shows: ``backfill_paused`` and
``backfill_resumed`` when the ``paused`` knob holds a worker back and lets it go.

:class:`LoggedProgress` wraps any progress sink (bar, JSON lines, nothing) and forwards every
call; the worker logs ``backfill_started`` and ``backfill_finished`` itself.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from dualwrite.logs.events import log_event

if TYPE_CHECKING:
    from dualwrite.backfill.progress import Progress, ProgressSink

__all__ = ["LoggedProgress"]

log = logging.getLogger("dualwrite.backfill")


class LoggedProgress:
    """A progress sink that logs pause and resume, then hands every call to ``inner``."""

    def __init__(self, inner: ProgressSink) -> None:
        self.inner = inner
        self._paused = False

    def update(self, progress: Progress, *, force: bool = False) -> None:
        paused = progress.state == "paused"
        if paused != self._paused:
            log_event(
                log, "backfill_paused" if paused else "backfill_resumed",
                migration=progress.migration, mode=progress.mode, shard=progress.shard,
                done=progress.done, remaining=progress.remaining,
            )  # fmt: skip
            self._paused = paused
        self.inner.update(progress, force=force)

    def event(self, name: str, **fields: Any) -> None:
        self.inner.event(name, **fields)

    def close(self) -> None:
        self.inner.close()
