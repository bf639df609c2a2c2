"""Typed settings: the one place every knob of dualwrite is read from the environment.

Every field maps to an upper-case environment variable of the same name (``DATABASE_URL``,
``ENCRYPTION_KEY``, ...). Secrets are :class:`pydantic.SecretStr`, so they never show in a
``repr`` or a log line.

>>> s = Settings(database_url=None, poll_interval_seconds=0.5)
>>> s.poll_interval_seconds
0.5
>>> "SecretStr" in repr(Settings(admin_token="t0ken"))
True
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dualwrite.errors import ConfigError


class Settings(BaseSettings):
    """All configuration of dualwrite, read from the environment (and an optional ``.env``)."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    # --- database -------------------------------------------------------------------------
    database_url: str | None = Field(
        default=None,
        description="postgresql+asyncpg://... of an external PostgreSQL 14+; unset = embedded",
    )
    data_dir: Path = Field(
        default=Path(".dualwrite/pg"), description="data folder of the embedded PostgreSQL"
    )
    db_pool_size: int = Field(default=10, ge=1, le=200)
    ddl_lock_timeout_ms: int = Field(
        default=500,
        ge=1,
        description="lock_timeout of each schema step attempt (live reads "
        "queue behind a waiting DDL for at most this long)",
    )
    ddl_statement_timeout_ms: int = Field(default=600_000, ge=1)
    ddl_retry_budget_seconds: float = Field(
        default=120.0, gt=0, description="how long one schema step keeps retrying its lock"
    )
    ddl_concurrent_deadline_seconds: float = Field(
        default=1800.0, gt=0, description="deadline of a CREATE/DROP INDEX CONCURRENTLY"
    )
    rewrite_wait_seconds: float = Field(
        default=60.0,
        ge=0,
        description="how long a rewrite waits for snapshots older than "
        "the purge to end before it is reported pending",
    )
    rewrite_estimate_mb_per_second: float = Field(
        default=20.0, gt=0, description="VACUUM FULL rate assumed to check an offline budget"
    )
    pg_repack_path: str | None = Field(
        default=None, description="pg_repack client (default: PATH, then the server's bindir)"
    )

    # --- keys (see dualwrite.crypto.keyring) ----------------------------------------------
    encryption_key: SecretStr | None = None
    encryption_key_version: str = "v1"
    encryption_keys: SecretStr | None = None
    encryption_current_key: str | None = None
    encryption_keys_file: Path | None = None
    key_lifetime_days: int = Field(default=90, ge=1)
    blind_index_key: SecretStr | None = None
    blind_index_bytes: int = Field(default=16, ge=8, le=32)

    # --- phase propagation ----------------------------------------------------------------
    poll_interval_seconds: float = Field(default=2.0, gt=0)
    listen_notify: bool = True
    instance_id: str | None = None
    soak_seconds: float = Field(default=300.0, ge=0)
    require_latency_gate: bool = True

    # --- reference application hooks (imported by name: dualwrite never imports them) -----
    reference_app: str = "clients_service.app:create_app"
    reference_seed_module: str = "clients_service.seed"
    reference_demo: str = "clients_service.demo:run_demo"
    reference_gate_thresholds: str = "clients_service.gate:thresholds_ms"

    # --- HTTP (admin tokens: see dualwrite.admin.tokens) -----------------------------------
    admin_token: SecretStr | None = Field(
        default=None, description="one operator token, named 'default' in the audit log"
    )
    admin_tokens: SecretStr | None = Field(
        default=None, description="name:scope:token,... (scope read or operator)"
    )
    admin_tokens_file: Path | None = Field(
        default=None, description="ADMIN_TOKENS entries, one per line; re-read when it changes"
    )
    api_token: SecretStr | None = None
    metrics_token: SecretStr | None = Field(
        default=None, description="require Authorization: Bearer <it> on GET /metrics"
    )
    shadow_read_sample_rate: float = Field(default=0.01, ge=0.0, le=1.0)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)

    # --- logs (see dualwrite.logs) --------------------------------------------------------
    log_format: Literal["auto", "json", "text"] = Field(
        default="auto", description="auto = JSON lines unless stderr is a terminal"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # --- backfill -------------------------------------------------------------------------
    backfill_batch_size: int = Field(default=1000, ge=1, le=100_000)
    backfill_max_rows_per_second: float = Field(default=0.0, ge=0)
    backfill_sleep_ratio: float = Field(default=0.0, ge=0)
    backfill_max_active_backends: int = Field(default=0, ge=0)
    backfill_max_replication_lag_seconds: float = Field(default=0.0, ge=0)

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _lower_case(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value


def load_settings(**overrides: object) -> Settings:
    """Build :class:`Settings` from the environment, turning validation errors into one line.

    >>> load_settings(poll_interval_seconds=1).poll_interval_seconds
    1.0
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "settings"
        raise ConfigError(f"invalid setting {where.upper()}: {first.get('msg')}") from None
