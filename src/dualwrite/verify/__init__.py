"""The verifier: decrypt every ciphertext and compare it with its plaintext, without printing PII.

* :mod:`~dualwrite.verify.scanner` -- :func:`verify` (full keyset scan or a sample), recorded
  for the guards;
* :mod:`~dualwrite.verify.checks` -- the scan SQL and the per-batch checks;
* :mod:`~dualwrite.verify.repair` -- ``--repair``;
* :mod:`~dualwrite.verify.report` -- :class:`VerificationReport` (counts and primary keys only).
"""

from dualwrite.verify.report import FieldCounts, VerificationReport
from dualwrite.verify.scanner import verify

__all__ = ["FieldCounts", "VerificationReport", "verify"]
