"""Configuration: command-line flags > environment (``TRACEHOUSE_*``) > YAML file > defaults.

The YAML file is named by ``--config`` or ``TRACEHOUSE_CONFIG``; its keys are the field names
below (``clickhouse_url: http://…``). Every limit the server enforces is a field here, so that
what an operator can tune is listed in one place (and in README's configuration table).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from tracehouse.alerting.egress import EgressPolicy
from tracehouse.storage.otlp_sql import ItemLimits
from tracehouse.storage.schema import (
    DEFAULT_SLOW_SQL_THRESHOLDS,
    SchemaOptions,
    parse_slow_sql_thresholds,
)

Role = Literal["ingest", "query", "worker"]
ALL_ROLES: tuple[Role, ...] = ("ingest", "query", "worker")
MiB = 1024 * 1024


class Settings(BaseSettings):
    """Everything tracehouse can be told; see README "Configuration"."""

    model_config = SettingsConfigDict(env_prefix="TRACEHOUSE_", extra="forbid")

    data_dir: Path = Path("tracehouse-data")
    clickhouse_url: str | None = Field(
        default=None,
        description="chdb:///abs/path (embedded) or http(s)://user:pass@host:8123/db; "
        "default: embedded engine in <data_dir>/clickhouse",
    )
    cluster: str | None = Field(default=None, description="ClickHouse cluster for ON CLUSTER DDL")
    auto_migrate: bool = Field(default=True, description="apply pending migrations at start")
    roles: list[Role] = Field(default_factory=lambda: list(ALL_ROLES))

    host: str = "0.0.0.0"
    grpc_port: int = 4317
    http_port: int = 4318
    api_port: int = 8080

    traces_retention_days: int = Field(default=0, ge=0, description="days; 0 keeps data forever")
    logs_retention_days: int = Field(default=0, ge=0, description="days; 0 keeps data forever")
    trace_id_projection: bool = Field(
        default=False,
        description="keep a second copy of the spans ordered by trace id (a projection of "
        "otel_traces): trace by id in ~45 instead of ~100 ms on 10M spans, for ~1.9x span "
        "storage and ~7 us more CPU per span stored (docs/decisions/0023-*.md)",
    )

    max_request_bytes: int = Field(default=64 * MiB, gt=0)
    max_attribute_value_length: int = Field(default=128 * 1024, gt=0, description="characters")
    max_attributes: int = Field(
        default=1000, gt=0, description="attributes kept per span, event, link, record, resource"
    )
    max_span_events: int = Field(default=1000, ge=0, description="events kept per span")
    max_span_links: int = Field(default=1000, ge=0, description="links kept per span")

    batch_max_rows: int = Field(default=50_000, gt=0, description="items per insert")
    queue_max_rows: int = Field(default=500_000, gt=0, description="items waiting for the disk")
    ingest_writers: int = Field(default=2, ge=1, le=16, description="concurrent inserts per signal")
    request_timeout_s: float = Field(default=30.0, gt=0)

    spool_dir: Path | None = Field(default=None, description="default: <data_dir>/spool")
    spool_max_bytes: int = Field(default=2048 * MiB, gt=0)
    spool_flush_ms: int = Field(default=10, ge=0, description="group commit window of the spool")
    insert_retry_interval_s: float = Field(default=5.0, gt=0)
    drain_timeout_s: float = Field(default=30.0, ge=0, description="insert the spool at stop")
    dedup_window_s: float = Field(default=600.0, ge=0)
    dedup_max_entries: int = Field(default=200_000, ge=0)

    leader_election: bool | None = Field(
        default=None,
        description="worker jobs run only while this process holds the ClickHouse lease; "
        "default: on with a ClickHouse server, off embedded (one process owns the data)",
    )
    leader_store: Literal["auto", "table", "keeper"] = Field(
        default="auto",
        description="where the lease lives: table (one server), keeper (KeeperMap, needs "
        "Keeper and keeper_map_path_prefix); auto: keeper with a cluster, else table",
    )
    leader_lease_s: float = Field(default=15.0, gt=0, description="lease without renewal")
    leader_renew_s: float = Field(default=5.0, gt=0, description="renewal interval")
    leader_settle_s: float = Field(
        default=2.0, gt=0, description="claim settle delay and step-down margin"
    )

    access_file: Path | None = Field(
        default=None,
        description="YAML of ingest and query tokens (roles, service scopes); none: open",
    )
    ingest_token_header: str = Field(
        default="authorization",
        description="header (gRPC metadata) carrying the ingest token, `Bearer <token>` or bare",
    )
    cors_allow_origins: list[str] = Field(
        default_factory=list, description="origins allowed to call the API from a browser"
    )
    slow_sql_thresholds: str = Field(
        default=DEFAULT_SLOW_SQL_THRESHOLDS,
        description="a database call at least this slow (ms) is slow, per db.system, in "
        "SkyWalking's form default:200,redis:10; applies to calls stored from then on",
    )
    slow_service_p99_ms: float = Field(
        default=1000.0, gt=0, description="/slow-services: a p99 above this is slow"
    )
    slow_service_factor: float = Field(
        default=2.0, gt=1, description="/slow-services: a p99 this many times the baseline's"
    )
    slow_service_min_calls: int = Field(
        default=10, ge=1, description="/slow-services: calls needed to judge a p99"
    )

    insights_interval_s: float = Field(
        default=60.0, gt=0, description="insights job: seconds between runs (worker role)"
    )
    insights_window_min: int = Field(
        default=5, ge=1, le=60, description="insights: the last closed minutes judged"
    )
    insights_baseline_min: int = Field(
        default=30, ge=1, le=1440, description="insights: minutes before them compared with"
    )
    insights_factor: float = Field(
        default=1.5, gt=1, description="insights: latency or error rate this many times before"
    )
    insights_min_calls: int = Field(
        default=20, ge=1, description="insights: calls needed in the window and the baseline"
    )
    insights_error_increase: float = Field(
        default=0.05, gt=0, le=1, description="insights: rise of the error rate (0.05 = 5 points)"
    )
    insights_min_delta_ms: float = Field(
        default=20.0, ge=0, description="insights: smallest latency rise (ms) worth an insight"
    )
    insights_cooldown_min: int = Field(
        default=15, ge=0, description="insights: minutes before the same insight is raised again"
    )

    alert_rules_file: Path | None = Field(
        default=None,
        description="YAML file of alert receivers and rules (docs/alerting.md), re-read when "
        "it changes; rules can also be added through /api/v1/alert-rules",
    )
    webhook_allow: list[str] = Field(
        default_factory=list,
        description="webhook targets (host names, CIDR networks); when set, only these",
    )
    webhook_deny: list[str] = Field(
        default_factory=list,
        description="webhook targets refused besides link-local and metadata addresses",
    )
    alert_external_url: str | None = Field(
        default=None,
        description="this tracehouse's URL as receivers should link to it (externalURL, "
        "generatorURL, trace links); default http://<host>:<api_port>",
    )

    log_level: str = "INFO"

    @field_validator("slow_sql_thresholds")
    @classmethod
    def _check_slow_sql_thresholds(cls, value: str) -> str:
        parse_slow_sql_thresholds(value)
        return value

    @model_validator(mode="after")
    def _check_webhook_targets(self) -> Settings:
        EgressPolicy(self.webhook_allow, self.webhook_deny)  # names a bad entry
        return self

    @field_validator("roles", mode="before")
    @classmethod
    def _split_roles(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _leader_settings(self) -> Settings:
        if self.leader_store == "table" and self.cluster:
            raise ValueError(
                "leader_store 'table' works on one ClickHouse server only: use 'keeper' (or "
                "'auto') with a cluster"
            )
        if not self.leader_renew_s + 2 * self.leader_settle_s < self.leader_lease_s:
            raise ValueError(
                f"leader_lease_s ({self.leader_lease_s}) must exceed leader_renew_s + "
                f"2 * leader_settle_s ({self.leader_renew_s} + 2 * {self.leader_settle_s})"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_file = os.environ.get("TRACEHOUSE_CONFIG")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if yaml_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
        return tuple(sources)

    @property
    def resolved_clickhouse_url(self) -> str:
        if self.clickhouse_url:
            return self.clickhouse_url
        return f"chdb://{(self.data_dir / 'clickhouse').resolve()}"

    @property
    def resolved_spool_dir(self) -> Path:
        return self.spool_dir if self.spool_dir is not None else self.data_dir / "spool"

    def item_limits(self) -> ItemLimits:
        """What one span, record or data point may hold before the insert cuts it."""
        return ItemLimits(
            max_value_length=self.max_attribute_value_length,
            max_attributes=self.max_attributes,
            max_events=self.max_span_events,
            max_links=self.max_span_links,
        )

    def schema_options(self) -> SchemaOptions:
        """What of this configuration shapes the DDL (``migrate``, and the start)."""
        default_ms, per_system = parse_slow_sql_thresholds(self.slow_sql_thresholds)
        return SchemaOptions(
            cluster=self.cluster,
            traces_retention_days=self.traces_retention_days,
            logs_retention_days=self.logs_retention_days,
            trace_id_projection=self.trace_id_projection,
            slow_sql_default_ms=default_ms,
            slow_sql_ms=per_system,
        )

    @property
    def resolved_alert_external_url(self) -> str:
        if self.alert_external_url:
            return self.alert_external_url.rstrip("/")
        host = "localhost" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.api_port}"

    @property
    def embedded(self) -> bool:
        return self.resolved_clickhouse_url.startswith("chdb:")

    @property
    def resolved_leader_store(self) -> Literal["table", "keeper"]:
        if self.leader_store == "auto":
            return "keeper" if self.cluster else "table"
        return self.leader_store

    @property
    def resolved_leader_election(self) -> bool:
        return self.leader_election if self.leader_election is not None else not self.embedded


def load_settings(config_file: str | None = None, **flags: Any) -> Settings:
    """Build settings; ``flags`` are command-line values (None means "not given")."""
    if config_file:
        os.environ["TRACEHOUSE_CONFIG"] = config_file
    return Settings(**{k: v for k, v in flags.items() if v is not None})
