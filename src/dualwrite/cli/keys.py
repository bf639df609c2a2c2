"""``dualwrite keys ...``: make new keys and show which versions are configured.

    $ dualwrite keys generate                 # ENCRYPTION_KEY=<base64>
    $ dualwrite keys generate --version v2    # v2=<base64>, to append to ENCRYPTION_KEYS
    $ dualwrite keys generate --blind-index   # BLIND_INDEX_KEY=<base64>
    $ dualwrite keys list [--json]            # versions, current, dates; never key bytes

``generate`` prints the one assignment line on stdout (so ``>> .env`` works) and a hint on
stderr. ``list`` reads the keys exactly as every other command does, so a missing or malformed
key fails here with the same one-line error.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from dualwrite.cli._common import cli_errors, console, echo_json, err_console, settings
from dualwrite.crypto import (
    generate_key,
    is_version_label,
    load_blind_index_key,
    load_keyring,
)
from dualwrite.errors import ConfigError, DualwriteError

keys_app = typer.Typer(help="Manage encryption keys", no_args_is_help=True)


@keys_app.command("generate")
@cli_errors
def generate(
    version: Annotated[
        str | None,
        typer.Option(
            "--version", help="Print 'vN=<key>' for ENCRYPTION_KEYS instead of ENCRYPTION_KEY."
        ),
    ] = None,
    blind_index: Annotated[
        bool, typer.Option("--blind-index", help="Print a BLIND_INDEX_KEY instead.")
    ] = False,
) -> None:
    """Print a fresh random 32-byte key (base64) as an assignment line."""
    if blind_index and version is not None:
        raise ConfigError("--blind-index keys have no version; drop --version")
    if version is not None and not is_version_label(version):
        raise ConfigError("--version must look like v1, v2, ... (v and a number, no leading 0)")
    key = generate_key()
    if blind_index:
        line, hint = f"BLIND_INDEX_KEY={key}", "set it once; changing it means re-indexing"
    elif version is not None:
        line = f"{version}={key}"
        hint = f"append to ENCRYPTION_KEYS and set ENCRYPTION_CURRENT_KEY={version} to rotate"
    else:
        line, hint = f"ENCRYPTION_KEY={key}", "version v1 unless ENCRYPTION_KEY_VERSION says so"
    typer.echo(line)
    err_console.print(
        f"# {hint}; keep it in your secret store, never in git", highlight=False, soft_wrap=True
    )


@keys_app.command("list")
@cli_errors
def list_keys(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show configured key versions, the current one, dates and days left (never key bytes)."""
    cfg = settings()
    now = datetime.now(UTC)
    ring = load_keyring(cfg, now=now)
    rows: list[dict[str, Any]] = [
        {
            "version": key.version,
            "current": key.version == ring.current.version,
            "created_at": key.created_at.isoformat(),
            "expires_at": key.expires_at.isoformat(),
            "days_left": int((key.expires_at - now).total_seconds() / 86_400),  # toward 0
        }
        for key in ring
    ]
    try:
        load_blind_index_key(cfg)
        blind = "configured"
    except DualwriteError as exc:
        blind = "missing" if "no blind index key" in str(exc) else "invalid"
    dated = ring.source.startswith("ENCRYPTION_KEYS_FILE")
    if as_json:
        echo_json(
            {
                "source": ring.source,
                "current": ring.current.version,
                "dates_known": dated,
                "blind_index_key": blind,
                "keys": rows,
            }
        )
        return
    table = Table(title=f"keys from {ring.source}")
    for column in ("version", "current", "created", "expires", "days left"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["version"],
            "*" if row["current"] else "",
            row["created_at"][:19],
            row["expires_at"][:19],
            str(row["days_left"]),
        )
    console.print(table)
    if not dated:
        console.print(
            "environment keys carry no dates: counted from now "
            "(use ENCRYPTION_KEYS_FILE to track expiry)",
            highlight=False,
            soft_wrap=True,
        )
    console.print(f"blind index key: {blind}", highlight=False)


from dualwrite.cli import app  # noqa: E402  (app is defined before this module is imported)

app.add_typer(keys_app, name="keys")
