"""The one configuration object of the service, read from ``NOMINAL_*`` environment variables.

Every value is validated when the process starts (fail fast): a typo in a limit or a database
URL stops ``nominal serve`` with a message naming the variable, instead of surfacing as a 500
on the first request that needs it.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from app.detector.imaging import PILLOW_PIXEL_CEILING

MiB = 1024 * 1024


class Settings(BaseSettings):
    """Service settings; each field is ``NOMINAL_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="NOMINAL_", env_file=None, extra="ignore",
                                      frozen=True)

    # Storage: SQLite file by default, PostgreSQL via postgresql+psycopg://user@host/db.
    database_url: str = "sqlite:///./data/nominal.db"
    db_timeout_s: float = Field(default=10.0, gt=0, le=300,
                                description="connect / lock-wait timeout of the database")
    db_pool_size: int = Field(default=10, ge=1, le=200)

    # Where backbone ONNX files live (built by `nominal build-backbones`).
    models_dir: Path = Path("models")
    preload_backbones: tuple[str, ...] = ("efficientnet_lite2",)  # the default preset's

    # Authentication: on unless turned off explicitly (local development; a warning is logged).
    # Every /v1 request carries a key in X-API-Key; NOMINAL_ADMIN_KEY is an admin key that
    # lives in the environment only (bootstrap: create the stored keys with it).
    auth_enabled: bool = True
    admin_key: SecretStr | None = None
    # First run without NOMINAL_ADMIN_KEY: an admin key named initial-admin is stored and its
    # plaintext written here (0600), once, when the database holds no admin key.
    initial_key_file: Path = Field(
        default=Path("./data/initial-admin-key"),
        description="where the first start writes the generated admin key")

    # Observability.
    metrics_access: Literal["open", "key", "off"] = Field(
        default="open", description="/metrics: open to scrapers, behind any valid key, or off")
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # Limits on what callers may send.
    max_upload_bytes: int = Field(default=20 * MiB, ge=1024, description="per image file")
    max_request_bytes: int = Field(default=128 * MiB, ge=1024,
                                   description="per request body (all files together)")
    max_image_pixels: int = Field(default=40_000_000, ge=64, le=PILLOW_PIXEL_CEILING)
    max_images_per_variant: int = Field(default=1000, ge=1)
    max_batch_files: int = Field(default=32, ge=1, le=1024)

    # Inference.
    model_cache_size: int = Field(
        default=16, ge=1, le=1024,
        description="ONNX sessions kept loaded, LRU over (variant, version)")
    inference_threads: int = Field(default=2, ge=1, le=256,
                                   description="intra-op threads per session")
    # onnxruntime execution providers in order of preference, e.g.
    # ["CUDAExecutionProvider", "CPUExecutionProvider"] where onnxruntime-gpu is installed;
    # providers this onnxruntime does not have are skipped, and CPU is used when none is left.
    execution_providers: tuple[str, ...] = Field(
        default=("CPUExecutionProvider",), min_length=1,
        description="onnxruntime execution providers, in order of preference (JSON list)")
    record_sweep_interval_s: float = Field(
        default=3600.0, ge=1, le=86400,
        description="how often every variant's record retention policy is applied")
    max_defect_regions: int = Field(
        default=10, ge=0, le=1000,
        description="defect regions in a verdict at most, highest score first")
    inference_workers: int = Field(
        default_factory=lambda: max(2, os.cpu_count() or 2), ge=1, le=256,
        description="concurrent decode+score calls (thread pool size)")

    # Training jobs.
    training_workers: int = Field(default=1, ge=0, le=64,
                                  description="training threads on this replica; 0 = serve only")
    training_threads: int = Field(default=2, ge=1, le=256,
                                  description="intra-op threads while fitting")
    job_poll_interval_s: float = Field(default=1.0, gt=0, le=60)
    job_heartbeat_interval_s: float = Field(default=5.0, gt=0, le=300)
    job_stale_after_s: float = Field(
        default=60.0, gt=0, le=86400,
        description="a running job without heartbeat this long is failed")
    job_progress_interval_s: float = Field(default=0.5, ge=0, le=60,
                                           description="minimum time between progress writes")

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        try:
            url = make_url(value)
        except ArgumentError as exc:
            # Not the value: a URL that does not parse may still hold a password.
            raise ValueError("NOMINAL_DATABASE_URL is not a database URL; expected "
                             "sqlite:///path/to/file.db or postgresql+psycopg://user:password"
                             "@host:5432/dbname") from exc
        if url.drivername in ("postgres", "postgresql"):
            # The usual libpq-style URL: use the psycopg 3 driver we ship.
            url = url.set(drivername="postgresql+psycopg")
            value = url.render_as_string(hide_password=False)
        backend = url.get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise ValueError(
                f"NOMINAL_DATABASE_URL must be sqlite:/// or postgresql+psycopg://, got {backend!r}"
            )
        if backend == "postgresql" and url.get_driver_name() != "psycopg":
            raise ValueError(
                "use the psycopg 3 driver for PostgreSQL: postgresql+psycopg://..., "
                f"got driver {url.get_driver_name()!r}"
            )
        if backend == "sqlite":
            if not url.database or url.database == ":memory:":
                # Each connection of an in-memory database is a different, empty database:
                # the training worker would never see the API's rows.
                raise ValueError("NOMINAL_DATABASE_URL must name a SQLite file, not :memory:")
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        return value

    @field_validator("preload_backbones")
    @classmethod
    def _check_backbones(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from app.detector.backbones import REGISTRY

        unknown = [name for name in value if name not in REGISTRY]
        if unknown:
            raise ValueError(f"unknown backbones in NOMINAL_PRELOAD_BACKBONES: {unknown}; "
                             f"known: {sorted(REGISTRY)}")
        return value

    @field_validator("admin_key")
    @classmethod
    def _check_admin_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None  # NOMINAL_ADMIN_KEY= (empty) means no key, not a key of length 0
        if len(value.get_secret_value()) < 16:
            raise ValueError("NOMINAL_ADMIN_KEY must be at least 16 characters")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_relations(self) -> Settings:
        if self.max_request_bytes < self.max_upload_bytes:
            raise ValueError(
                f"NOMINAL_MAX_REQUEST_BYTES ({self.max_request_bytes}) must be at least "
                f"NOMINAL_MAX_UPLOAD_BYTES ({self.max_upload_bytes})"
            )
        if self.job_stale_after_s <= 2 * self.job_heartbeat_interval_s:
            raise ValueError(
                f"NOMINAL_JOB_STALE_AFTER_S ({self.job_stale_after_s}) must exceed twice "
                f"NOMINAL_JOB_HEARTBEAT_INTERVAL_S ({self.job_heartbeat_interval_s})"
            )
        return self


# Settings whose value must never appear in an error message or a log line: the admin key, and
# the database URL (it usually carries the password).
SECRET_FIELDS = frozenset({"admin_key", "database_url"})


class SettingsError(ValueError):
    """Invalid ``NOMINAL_*`` settings: one line per problem, naming the variable, never the
    value of a secret (pydantic's own ``ValidationError`` text echoes every input value)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid settings: " + "; ".join(problems))


def describe_errors(exc: ValidationError) -> list[str]:
    """One line per error of ``exc``: ``NOMINAL_<FIELD>: <message>``, with the value that was
    given only for fields outside ``SECRET_FIELDS``, and only where the message lacks it."""
    problems = []
    for error in exc.errors(include_url=False, include_input=True):
        field = str(error["loc"][0]) if error["loc"] else None
        message = error["msg"].removeprefix("Value error, ")
        if field is None:  # a check across fields: its message names them
            problems.append(message)
            continue
        line = f"NOMINAL_{field.upper()}: {message}"
        if field not in SECRET_FIELDS and error["type"] != "value_error" and "input" in error:
            line += f" (got {error['input']!r})"
        problems.append(line)
    return problems


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment; ``SettingsError`` when they
    do not validate."""
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(describe_errors(exc)) from None
