"""Admin tokens: who may read, who may change — each known by a name, never by its value.

Configuration (all may be set at once; every token listed is valid at the same time, so a new
token can be added, rolled out to its users and the old one removed without a gap):

* ``ADMIN_TOKENS=name:scope:token,...`` -- ``scope`` is ``read`` (``GET`` routes: status,
  audit) or ``operator`` (everything, including phase moves, knobs and gates);
* ``ADMIN_TOKENS_FILE=/path`` -- the same entries, one per line (``#`` comments). The file is
  read on every admin request and parsed again when it changed, so **adding or revoking a
  token in the file needs no restart**; the environment variables are read once, at start. A
  file that becomes unreadable or malformed refuses every admin request (503) until fixed —
  a typo must not keep a revoked token alive;
* ``ADMIN_TOKEN=token`` -- one operator token, named ``default``.

Names are 1-64 of ``A-Z a-z 0-9 _ . -``; tokens are at least 16 visible ASCII characters (no
spaces or commas). A malformed entry fails at start with one line naming the variable and the
entry, never the token. Only SHA-256 digests of the tokens are kept, and a presented token is
compared with every configured one in constant time (:func:`hmac.compare_digest` on digests).

>>> tokens = parse_tokens("ops:operator:op-token-0123456789,ci:read:ci-token-0123456789")
>>> [(t.name, t.scope) for t in tokens]
[('ops', 'operator'), ('ci', 'read')]
>>> TokenSet(tokens).match("ci-token-0123456789")
AdminToken(name='ci', scope='read')
>>> parse_tokens("ops:admin:op-token-0123456789")
Traceback (most recent call last):
dualwrite.errors.ConfigError: ADMIN_TOKENS entry 1 ('ops'): scope must be read or operator
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dualwrite.errors import ConfigError
from dualwrite.logs import log_event

if TYPE_CHECKING:
    from dualwrite.config import Settings

__all__ = [
    "OPERATOR",
    "READ",
    "SCOPES",
    "AdminToken",
    "TokenSet",
    "TokenSource",
    "parse_tokens",
]

READ, OPERATOR = "read", "operator"
SCOPES = (READ, OPERATOR)
MIN_TOKEN_LENGTH = 16

_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_TOKEN = re.compile(r"[\x21-\x2b\x2d-\x7e]+")  # visible ASCII except the comma
log = logging.getLogger("dualwrite.admin")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True, slots=True)
class AdminToken:
    """A configured token: its name (shown in the audit log), scope and digest."""

    name: str
    scope: str
    digest: bytes = field(repr=False, compare=False)

    def allows(self, needed: str) -> bool:
        """Whether this token may use a route that needs scope ``needed``."""
        return self.scope == OPERATOR or needed == READ


def _check_token(token: str, where: str, variable: str) -> None:
    if len(token) < MIN_TOKEN_LENGTH or not _TOKEN.fullmatch(token):
        raise ConfigError(
            f"{variable} {where}: a token must be at least {MIN_TOKEN_LENGTH} visible ASCII "
            "characters without spaces or commas (value not shown)"
        )


def parse_tokens(text: str, variable: str = "ADMIN_TOKENS") -> list[AdminToken]:
    """The tokens of ``name:scope:token`` entries separated by commas or new lines."""
    entries = [e.strip() for line in text.splitlines() for e in line.split(",")]
    entries = [e for e in entries if e and not e.startswith("#")]
    out: list[AdminToken] = []
    for n, entry in enumerate(entries, 1):
        name, sep1, rest = entry.partition(":")
        scope, sep2, token = rest.partition(":")
        if not (sep1 and sep2):  # without both colons the "name" may be the token itself
            raise ConfigError(
                f"{variable} entry {n}: must look like name:scope:token (value not shown)"
            )
        if not _NAME.fullmatch(name):
            raise ConfigError(
                f"{variable} entry {n}: the name must be 1-64 of A-Z a-z 0-9 _ . - "
                "(value not shown)"
            )
        if scope not in SCOPES:
            raise ConfigError(f"{variable} entry {n} ({name!r}): scope must be read or operator")
        _check_token(token, f"entry {n} ({name!r})", variable)
        out.append(AdminToken(name, scope, _digest(token)))
    return out


def _combine(*groups: tuple[str, Sequence[AdminToken]]) -> list[AdminToken]:
    """Every token, refusing a name or a token given twice (naming both, showing neither)."""
    by_name: dict[str, str] = {}
    by_digest: dict[bytes, str] = {}
    out: list[AdminToken] = []
    for variable, tokens in groups:
        for t in tokens:
            if t.name in by_name:
                raise ConfigError(
                    f"{variable}: token name {t.name!r} is already used (in {by_name[t.name]})"
                )
            if t.digest in by_digest:
                raise ConfigError(
                    f"{variable}: token {t.name!r} has the same value as {by_digest[t.digest]!r}"
                )
            by_name[t.name], by_digest[t.digest] = variable, t.name
            out.append(t)
    return out


class TokenSet:
    """The tokens valid now; :meth:`match` compares a presented token with each of them."""

    def __init__(self, tokens: Sequence[AdminToken]) -> None:
        self.tokens = tuple(tokens)

    def __bool__(self) -> bool:
        return bool(self.tokens)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tokens]

    def match(self, given: str) -> AdminToken | None:
        """The token ``given`` is, or ``None`` (every token is compared: no early exit)."""
        digest, found = _digest(given), None
        for t in self.tokens:
            if hmac.compare_digest(digest, t.digest) and found is None:
                found = t
        return found


class TokenSource:
    """The admin tokens of one process: the environment's, plus ``ADMIN_TOKENS_FILE`` read
    again whenever it changes (see the module docstring). Raises :class:`ConfigError` on a
    malformed configuration, at construction and from :meth:`current`."""

    def __init__(self, settings: Settings) -> None:
        self._fixed: list[tuple[str, list[AdminToken]]] = []
        if settings.admin_token is not None and settings.admin_token.get_secret_value():
            token = settings.admin_token.get_secret_value()
            _check_token(token, "value", "ADMIN_TOKEN")
            self._fixed.append(("ADMIN_TOKEN", [AdminToken("default", OPERATOR, _digest(token))]))
        if settings.admin_tokens is not None:
            self._fixed.append(
                ("ADMIN_TOKENS", parse_tokens(settings.admin_tokens.get_secret_value()))
            )
        self.path = settings.admin_tokens_file
        self._lock = threading.Lock()
        self._read: bytes | None = None  # the file's content the current set was built from
        self._set = TokenSet(_combine(*self._fixed))
        if self.path is not None:
            self._reload(self._content())

    @property
    def configured(self) -> bool:
        """Whether any token source is configured at all (else the admin API is disabled)."""
        return bool(self._fixed) or self.path is not None

    def _content(self) -> bytes:
        assert self.path is not None
        try:
            return Path(self.path).read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"ADMIN_TOKENS_FILE {self.path} cannot be read ({exc.strerror})"
            ) from None

    def _reload(self, content: bytes) -> None:
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"ADMIN_TOKENS_FILE {self.path} is not UTF-8 text") from None
        from_file = parse_tokens(text, "ADMIN_TOKENS_FILE")
        self._set = TokenSet(_combine(*self._fixed, ("ADMIN_TOKENS_FILE", from_file)))
        first, self._read = self._read is None, content
        if not first:
            log_event(log, "admin_tokens_reloaded", tokens=self._set.names)

    def current(self) -> TokenSet:
        """The tokens valid now (the file — a few lines — is read on every call and parsed
        again when its content changed)."""
        if self.path is None:
            return self._set
        with self._lock:
            content = self._content()
            if content != self._read:
                try:
                    self._reload(content)
                except ConfigError:
                    self._set, self._read = TokenSet(()), b""  # fail closed until fixed
                    raise
            return self._set
