"""``bench.py crypto``: FieldCipher against bare AESGCM, per 20-byte field, same run.

Ours is ``FieldCipher.encrypt`` / ``FieldCipher.decrypt`` with a real table, column and UUID
row key (format, associated data, prefix parsing, UTF-8 included); ``*_many_us`` are the same
per field through the batch helpers ``encrypt_many`` / ``decrypt_many``. The baseline is the least a
caller could do with ``cryptography``: ``AESGCM.encrypt(os.urandom(12), data, aad)`` and
``AESGCM.decrypt(nonce, ct, aad)`` with precomputed bytes and an aad of the same length. Each
side runs ``--iterations`` calls per repeat, the four measurements are interleaved, and the best
of ``--repeats`` counts (the least disturbed by the machine).

    uv run python loadtests/bench.py crypto --json
"""

from __future__ import annotations

import argparse
import datetime as dt
import decimal
import os
import platform
import time
import uuid
from collections.abc import Callable
from typing import Any

import cryptography
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dualwrite.crypto import DataKey, FieldCipher, Keyring, associated_data
from dualwrite.crypto.values import value_type

TABLE, COLUMN = "clients", "email"
VALUE = "ada.lovelace@ex.io.x"  # 20 bytes of UTF-8
ROW_KEYS = 1024  # distinct rows cycled through


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--iterations", type=int, default=200_000, help="calls per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="best of this many repeats")


def _time(loop: Callable[[], None], iterations: int) -> float:
    """Microseconds per call of one run of ``loop``."""
    start = time.perf_counter_ns()
    loop()
    return (time.perf_counter_ns() - start) / iterations / 1000


def run(args: argparse.Namespace) -> dict[str, Any]:
    iterations, repeats = int(args.iterations), int(args.repeats)
    if iterations < ROW_KEYS or repeats < 1:
        raise SystemExit(f"--iterations must be >= {ROW_KEYS} and --repeats >= 1")
    key = os.urandom(32)
    cipher = FieldCipher(Keyring([DataKey("v1", key)]))
    aead = AESGCM(key)
    assert len(VALUE.encode()) == 20

    row_keys = [str(uuid.uuid4()) for _ in range(ROW_KEYS)]
    rows = (row_keys * (iterations // ROW_KEYS + 1))[:iterations]
    aads = [associated_data("v1", TABLE, COLUMN, rk) for rk in row_keys]
    raw_aads = (aads * (iterations // ROW_KEYS + 1))[:iterations]
    plain = VALUE.encode()
    ours_ct = [cipher.encrypt(VALUE, table=TABLE, column=COLUMN, row_key=rk) for rk in rows]
    pairs = list(zip(ours_ct, rows, strict=True))
    raw_triples = []
    for aad in raw_aads:
        nonce = os.urandom(12)
        raw_triples.append((nonce, aead.encrypt(nonce, plain, aad), aad))
    assert cipher.decrypt(pairs[0][0], table=TABLE, column=COLUMN, row_key=pairs[0][1]) == VALUE

    urandom, raw_enc, raw_dec = os.urandom, aead.encrypt, aead.decrypt
    enc, dec = cipher.encrypt, cipher.decrypt

    def raw_encrypt() -> None:
        for aad in raw_aads:
            nonce = urandom(12)
            raw_enc(nonce, plain, aad)

    def our_encrypt() -> None:
        for rk in rows:
            enc(VALUE, table=TABLE, column=COLUMN, row_key=rk)

    def raw_decrypt() -> None:
        for nonce, ct, aad in raw_triples:
            raw_dec(nonce, ct, aad)

    def our_decrypt() -> None:
        for ct, rk in pairs:
            dec(ct, table=TABLE, column=COLUMN, row_key=rk)

    items = [(VALUE, rk) for rk in rows]

    def our_encrypt_many() -> None:
        cipher.encrypt_many(items, table=TABLE, column=COLUMN)

    def our_decrypt_many() -> None:
        cipher.decrypt_many(pairs, table=TABLE, column=COLUMN)

    def coerce(sql: str, value: Any) -> Callable[[], None]:
        encode = value_type(sql).encode

        def loop() -> None:
            for _ in rows:
                encode(value)

        return loop

    typed = {  # the canonical text of a typed value, as PostgreSQL stores it (before encrypting)
        "coerce_date_us": coerce("date", dt.date(1980, 1, 2)),
        "coerce_timestamptz_us": coerce(
            "timestamp(3) with time zone", dt.datetime(2024, 3, 1, 9, 30, 15, 123456, dt.UTC)
        ),
        "coerce_numeric_us": coerce("numeric(10,2)", decimal.Decimal("12.345")),
        "coerce_jsonb_us": coerce("jsonb", {"allergies": ["penicillin"], "weight_kg": 61.5}),
    }
    loops = {
        **typed,
        "raw_encrypt_us": raw_encrypt,
        "encrypt_us": our_encrypt,
        "encrypt_many_us": our_encrypt_many,
        "raw_decrypt_us": raw_decrypt,
        "decrypt_us": our_decrypt,
        "decrypt_many_us": our_decrypt_many,
    }
    best = dict.fromkeys(loops, float("inf"))
    for _ in range(repeats):
        for name, loop in loops.items():  # interleaved: one of each per repeat
            best[name] = min(best[name], _time(loop, iterations))
    result: dict[str, Any] = {name: round(value, 4) for name, value in best.items()}
    result["encrypt_ratio"] = round(best["encrypt_us"] / best["raw_encrypt_us"], 3)
    result["decrypt_ratio"] = round(best["decrypt_us"] / best["raw_decrypt_us"], 3)
    for op in ("encrypt", "decrypt"):  # the batch helpers, for bulk reads and the backfill
        result[f"{op}_many_ratio"] = round(best[f"{op}_many_us"] / best[f"raw_{op}_us"], 3)
    result.update(
        field_bytes=len(plain),
        aad_bytes=len(aads[0]),
        iterations=iterations,
        repeats=repeats,
        python=platform.python_version(),
        cryptography=cryptography.__version__,
    )
    return result


def format_human(result: dict[str, Any]) -> str:
    lines = [
        f"per {result['field_bytes']}-byte field, best of {result['repeats']} x "
        f"{result['iterations']} calls (python {result['python']}, "
        f"cryptography {result['cryptography']})",
        f"{'':14}{'FieldCipher':>14}{'bare AESGCM':>14}{'ratio':>8}",
    ]
    for op in ("encrypt", "decrypt", "encrypt_many", "decrypt_many"):
        raw = op.split("_")[0]
        lines.append(
            f"{op:14}{result[f'{op}_us']:>11.3f} us{result[f'raw_{raw}_us']:>11.3f} us"
            f"{result[f'{op}_ratio']:>8.2f}"
        )
    for name in ("date", "timestamptz", "numeric", "jsonb"):
        lines.append(f"coerce {name:7}{result[f'coerce_{name}_us']:>11.3f} us (canonical text)")
    return "\n".join(lines)
