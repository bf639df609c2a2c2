"""The finalize window: an instance in ``contract`` whose plaintext columns were just dropped.

The contract revision drops the plaintext columns while instances may still observe
``contract`` (they write NULL plaintext, so they still name the columns). Such a statement
fails with "column does not exist"; the caller retries it once, in a new transaction, under
:func:`without_plaintext_columns`, so finalizing fails no request.
"""

from __future__ import annotations

import dataclasses

from dualwrite.phases import Behaviour

__all__ = ["plaintext_columns_dropped", "without_plaintext_columns"]

_UNDEFINED_COLUMN = "42703"


def plaintext_columns_dropped(behaviour: Behaviour, exc: BaseException) -> bool:
    """Whether ``exc`` is PostgreSQL's "column does not exist" in a phase that no longer
    writes plaintext but still expects its columns (``contract``): the contract revision has
    just dropped them and this instance has not observed ``finalized`` yet.

    The caller then retries once (in a new transaction) with
    :func:`without_plaintext_columns`, so finalizing causes no failed request.
    """
    if not behaviour.plaintext_column_exists or behaviour.writes_plaintext:
        return False
    orig = getattr(exc, "orig", None)
    return getattr(orig, "sqlstate", None) == _UNDEFINED_COLUMN


def without_plaintext_columns(behaviour: Behaviour) -> Behaviour:
    """``behaviour`` minus everything that touches the plaintext columns.

    >>> from dualwrite.phases import behaviour
    >>> b = without_plaintext_columns(behaviour("contract"))
    >>> b.plaintext_column_exists, b.nulls_plaintext, b.fallback_to_plaintext, b.reads_from.value
    (False, False, False, 'ciphertext')
    """
    return dataclasses.replace(
        behaviour,
        plaintext_column_exists=False,
        writes_plaintext=False,
        nulls_plaintext=False,
        fallback_to_plaintext=False,
        shadow_compare=False,
    )
