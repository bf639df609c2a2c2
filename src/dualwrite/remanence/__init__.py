"""Plaintext remanence: the rewrite that removes it from the table's files, and the scan that
checks (DESIGN §11).

* :mod:`~dualwrite.remanence.pglz`, :mod:`~dualwrite.remanence.pages`,
  :mod:`~dualwrite.remanence.needles` -- PURE: pglz decompression, page/tuple/TOAST carving,
  what to search for;
* :mod:`~dualwrite.remanence.sources` -- reading pages (pageinspect, server files, local files);
* :mod:`~dualwrite.remanence.scan` -- the scan; :mod:`~dualwrite.remanence.report` -- its
  report, the rewrite's, and the checklist of what stays out of reach;
* :mod:`~dualwrite.remanence.horizon`, :mod:`~dualwrite.remanence.rewrite` -- the rewrite
  (pg_repack online, VACUUM FULL within an offline budget, or pending).
"""

from __future__ import annotations

from dualwrite.remanence.report import OUTSIDE_REACH, NotScanned, RewriteReport, ScanReport
from dualwrite.remanence.rewrite import METHODS, RewriteOptions, repack_status, rewrite
from dualwrite.remanence.scan import DEFAULT_SAMPLE, scan

__all__ = [
    "DEFAULT_SAMPLE",
    "METHODS",
    "OUTSIDE_REACH",
    "NotScanned",
    "RewriteOptions",
    "RewriteReport",
    "ScanReport",
    "repack_status",
    "rewrite",
    "scan",
]
