"""Shared plumbing of the ``dualwrite`` CLI: one-line errors, async entry, settings.

Every command body is wrapped by :func:`cli_errors`, so a :class:`~dualwrite.errors.DualwriteError`
(or a database/OS failure) ends as one line on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import typer
from rich.console import Console

from dualwrite.errors import DualwriteError, describe

if TYPE_CHECKING:
    from dualwrite.config import Settings

P = ParamSpec("P")
T = TypeVar("T")

console = Console()
err_console = Console(stderr=True, highlight=False)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: <message>`` on stderr and return the Exit to raise."""
    err_console.print(f"[red]error:[/red] {message}", markup=True, soft_wrap=True)
    return typer.Exit(code)


def cli_errors(fn: Callable[P, T]) -> Callable[P, T]:
    """Decorator: turn expected failures into ``error: ...`` + exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except DualwriteError as exc:
            raise fail(str(exc)) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None
        except OSError as exc:
            raise fail(f"{type(exc).__name__}: {exc.strerror or exc}") from None
        except Exception as exc:  # database driver errors and the like: one line, no traceback
            raise fail(describe(exc)) from None

    return wrapper


def run_async(coro: Coroutine[Any, Any, T] | Awaitable[T]) -> T:
    """Run a coroutine from a synchronous typer command."""
    return asyncio.run(coro)  # type: ignore[arg-type]


def settings() -> Settings:
    """Settings for this CLI invocation (environment + ``.env``); also sets up the logs
    (:func:`dualwrite.logs.setup_logging`: stderr, ``LOG_FORMAT``, ``LOG_LEVEL``, secrets
    registered for redaction), so every command that reads settings logs the same way."""
    from dualwrite.config import load_settings  # pydantic-settings: not needed for --help
    from dualwrite.logs import setup_logging

    loaded = load_settings()
    setup_logging(settings=loaded)
    return loaded


def show_progress() -> None:
    """Print the progress of schema steps (and what they wait for) on stderr."""
    import logging

    logger = logging.getLogger("dualwrite.schema")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def echo_json(obj: Any) -> None:
    import json

    sys.stdout.write(json.dumps(obj, default=str, sort_keys=True) + "\n")
