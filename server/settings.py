"""Server settings from ``SECDOOD_*`` environment variables (pydantic-settings).

Every default works on a laptop: data under ``./.secdood``, SQLite inside it,
REST on 8000 and gRPC on 50051 on loopback. See docs/operations.md for the full
list.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """All knobs of ``secdood-server``; validated at start-up."""

    model_config = SettingsConfigDict(env_prefix="SECDOOD_", extra="ignore")

    data_dir: Path = Field(Path(".secdood"), description="database, artifacts and caches")
    db_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in data_dir")
    host: str = Field("127.0.0.1", description="address both servers bind to")
    rest_port: int = Field(8000, ge=0, le=65535)
    grpc_port: int = Field(50051, ge=0, le=65535)
    # Keys and tokens. Unset keys are generated at first start and written (0600) to
    # data_dir/keys.json so a fresh deployment is never open by accident.
    enrollment_key: SecretStr | None = None
    scoring_api_key: SecretStr | None = None
    admin_api_key: SecretStr | None = None
    token_ttl_seconds: int = Field(30 * 24 * 3600, gt=0, description="device token lifetime")
    # TLS for gRPC and REST: both paths or neither.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_upload_bytes: int = Field(64 * 1024 * 1024, gt=0, description="HE context / video cap")
    # Overload protection (docs/operations.md, "Limits"): past these, callers are refused
    # with 429 / RESOURCE_EXHAUSTED and a retry hint instead of queueing without bound.
    max_queued_jobs: int = Field(8, ge=1, description="training jobs waiting for the worker")
    rest_concurrent_scoring: int = Field(4, ge=1, description="scoring requests run at once")
    rest_waiting_scoring: int = Field(16, ge=0, description="scoring requests that may wait")
    grpc_max_data_streams: int = Field(
        16, ge=1, description="uploads, downloads and Personalize calls in flight, all devices"
    )
    grpc_max_streams_per_device: int = Field(2, ge=1, description="the same, per device")
    grpc_max_he_calls: int = Field(
        4, ge=1, description="Personalize calls (CKKS evaluation) in flight, of the data calls"
    )
    grpc_max_telemetry_calls: int = Field(4, ge=1, description="telemetry calls in flight")
    grpc_message_timeout_s: float = Field(
        10.0, gt=0, description="longest wait for the next chunk of an upload"
    )
    grpc_stream_timeout_s: float = Field(
        300.0, gt=0, description="longest an upload or download stream may stay open"
    )
    grpc_min_upload_bytes_per_s: int = Field(
        64 * 1024, ge=0, description="slowest accepted upload rate (after a 5 s grace)"
    )
    context_cache_bytes: int = Field(
        1024 * 1024 * 1024,
        gt=0,
        description="memory for parsed device HE contexts (about 26 MiB each at N = 8192, "
        "split evenly over HE workers); least recently used ones are dropped and re-read "
        "from the registry when needed",
    )
    bootstrap_model: bool = Field(True, description="train the default model when none exists")
    he_workers: int = Field(
        0,
        ge=0,
        description="processes that evaluate encrypted personalisation (0: in the gRPC "
        "threads, one core at a time; the core count uses every core)",
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("set both SECDOOD_TLS_CERT and SECDOOD_TLS_KEY, or neither")
        return self

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{(self.data_dir / 'registry.sqlite3').resolve()}"
