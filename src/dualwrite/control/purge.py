"""After ``finalize``: rewrite the table, then scan it for plaintext (one place for the CLI
and the demo).

>>> report = await rewrite_and_scan(engine, "clients_pii", settings, cipher,
...                                 RewriteOptions("vacuum-full", budget=5))  # doctest: +SKIP
>>> report.rewrite.status, report.scan.residual_plaintext                    # doctest: +SKIP
('done', 0)

The scan runs only after a rewrite that was done (before it, the plaintext is known to be
there: the report says the rewrite is pending and how to do it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from dualwrite.config import Settings
from dualwrite.crypto import FieldCipher
from dualwrite.remanence import RewriteOptions, RewriteReport, ScanReport, rewrite, scan
from dualwrite.state import registry

__all__ = ["PurgeReport", "rewrite_and_scan"]

log = logging.getLogger("dualwrite.schema.rewrite")


@dataclass
class PurgeReport:
    rewrite: RewriteReport
    scan: ScanReport | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "rewrite": self.rewrite.as_dict(),
            "scan": self.scan.as_dict() if self.scan is not None else None,
        }


async def rewrite_and_scan(
    engine: AsyncEngine,
    name: str,
    settings: Settings,
    cipher: FieldCipher | None,
    options: RewriteOptions,
    *,
    sample: int | None = None,
    say: Callable[[str], None] = log.info,
) -> PurgeReport:
    """Rewrite migration ``name``'s table per ``options``; scan it when the rewrite was done
    and a ``cipher`` is at hand (the scan decrypts sampled rows in memory)."""
    async with engine.connect() as conn:
        spec = (await registry.get_migration(conn, name)).spec
    done = await rewrite(engine, spec, settings, options, say=say)
    report = PurgeReport(done)
    if done.status == "done" and cipher is not None:
        kwargs = {"sample": sample} if sample else {}
        report.scan = await scan(engine, spec, cipher, say=say, **kwargs)
    return report
