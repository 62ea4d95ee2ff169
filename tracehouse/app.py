"""The composition root: builds the ClickHouse client, then stores, pipeline and servers.

``Tracehouse(settings).start()`` runs the configured roles in this process (all of them by
default, which the embedded engine requires); ``stop()`` stops accepting, flushes everything
acknowledged, and closes. Tests build it with port 0 and read the bound ports back.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import uvicorn
from clickhouse_connect.driver.exceptions import OperationalError
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from tracehouse import __version__, ingest, storage
from tracehouse.access import (
    AccessControl,
    ApiAccess,
    AuditLog,
    GrpcIngestAccess,
    IngestAccess,
    ScopedClient,
    audit_router,
)
from tracehouse.alerting import AlertWorker, EgressPolicy
from tracehouse.alerting import router as alerting_router
from tracehouse.config import Settings
from tracehouse.dashboards import ui_router
from tracehouse.diagnosis import InsightSettings, InsightWorker, diagnosis_router
from tracehouse.ingest import IngestPipeline, OtlpReceiver, PipelineLimits, Sink, Spool
from tracehouse.model import Signal
from tracehouse.query import SlowServiceDefaults, health_router, jaeger_router, read_router
from tracehouse.storage.client import LazyClient, is_unreachable, unreachable_reason
from tracehouse.storage.lease import (
    AlwaysLeader,
    JobFactory,
    LeaderElector,
    LeaderGate,
    Leadership,
    make_store,
)
from tracehouse.storage.schema import load_migrations
from tracehouse.topology import EdgeBuilder, EdgeWorker

log = logging.getLogger(__name__)


@dataclass
class Ports:
    grpc: int = 0
    http: int = 0
    api: int = 0


@dataclass
class _AsgiServers:
    servers: list[uvicorn.Server] = field(default_factory=list)
    thread: threading.Thread | None = None


class Tracehouse:
    """One process of tracehouse, running ``settings.roles``."""

    def __init__(self, settings: Settings, sink: Sink | None = None) -> None:
        self.settings = settings
        self.ports = Ports()
        self.client: Any = None
        self.access = AccessControl.open()
        self._sink_override = sink
        self.pipeline: IngestPipeline | None = None
        self._grpc: grpc.Server | None = None
        self._asgi = _AsgiServers()
        self._sockets: list[socket.socket] = []
        self._migrated = False
        self._writer: storage.ClickHouseWriter | None = None
        self._edges_client: Any = None
        self._alerting_client: Any = None
        self._insights_client: Any = None
        self.leader: LeaderElector | None = None  # with leader election (see config)
        self._lease_client: Any = None
        self._gate: LeaderGate | None = None
        # Set once the server answered, its version is fine and auto-migrations are applied;
        # until then inserts wait (the data is in the spool) and the worker jobs do not run.
        self._storage_ready = threading.Event()
        self._storage_error: BaseException | None = None  # why not ready, while it is not
        self._stopping = threading.Event()
        self._starter: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._quiet = _QuietConnectionErrors()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the roles; on any failure, undo what was started and re-raise."""
        try:
            self._start()
        except BaseException:
            self.stop(grace_s=1.0)
            raise

    def _start(self) -> None:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        self.access = (
            AccessControl.from_file(s.access_file) if s.access_file else AccessControl.open()
        )
        self.client = self._connect()
        if not s.embedded:
            self._quiet.attach()  # until the server answered (_storage_became_ready)
        try:
            self._prepare_storage()
        except Exception as exc:
            if s.embedded or not is_unreachable(exc):
                raise
            # A server URL that does not answer yet: come up anyway (ingest accepts into the
            # spool) and keep trying in the background (docs/decisions/0017, point 8).
            self._storage_error = exc
            log.warning(
                "ClickHouse at %s unreachable at start (%s); ingest accepting into the spool, "
                "migrations and inserts wait until it answers",
                _redact(s.resolved_clickhouse_url),
                unreachable_reason(exc),
            )

        # Bind every port first, so a busy port fails the start before anything runs.
        api_socket = _bind(s.host, s.api_port)
        self._sockets.append(api_socket)
        self.ports.api = api_socket.getsockname()[1]
        apps: list[tuple[Any, socket.socket]] = [(self._api_app(), api_socket)]
        if "ingest" in s.roles:
            http_socket = _bind(s.host, s.http_port)
            self._sockets.append(http_socket)
            self.ports.http = http_socket.getsockname()[1]
            apps.append((self._start_ingest(), http_socket))
        self._serve_asgi(apps)
        if "worker" in s.roles:
            # Its own client: a recomputation must not queue API queries behind it.
            self._edges_client = self._connect()
            self._alerting_client = self._connect()
            self._insights_client = self._connect()
        if self._storage_error is None:
            self._storage_became_ready()
        else:
            self._starter = threading.Thread(
                target=self._prepare_storage_until_done, name="storage-start", daemon=True
            )
            self._starter.start()
        log.info(
            "tracehouse %s up: roles=%s storage=%s grpc=%s http=%s api=%s",
            __version__,
            ",".join(s.roles),
            _redact(s.resolved_clickhouse_url),
            self.ports.grpc or "-",
            self.ports.http or "-",
            self.ports.api,
        )

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting, flush accepted data (insert or spool), then close. Idempotent.

        Requests in flight wait on the pipeline, so it is flushed before the servers are
        waited for: every request accepted before the stop gets its answer.
        """
        with self._start_lock:  # the background start starts nothing from now on
            self._stopping.set()
        if self._starter is not None:
            self._starter.join(grace_s + 5)
            self._starter = None
        self._quiet.detach()
        if self._gate is not None:
            self._gate.stop(grace_s)  # the jobs first, then the lease is handed back
            self._gate = None
        if self.leader is not None:
            self.leader.stop(release=True)
            self.leader = None
        if self._lease_client is not None:
            self._lease_client.close()
            self._lease_client = None
        if self._edges_client is not None:
            self._edges_client.close()
            self._edges_client = None
        if self._alerting_client is not None:
            self._alerting_client.close()
            self._alerting_client = None
        if self._insights_client is not None:
            self._insights_client.close()
            self._insights_client = None
        grpc_stopped = self._grpc.stop(grace_s) if self._grpc is not None else None
        self._grpc = None
        for server in self._asgi.servers:
            server.should_exit = True
        if self.pipeline is not None:
            self.pipeline.stop()
        if grpc_stopped is not None:
            grpc_stopped.wait()
        if self._asgi.thread is not None:
            self._asgi.thread.join(grace_s + 5)
            self._asgi = _AsgiServers()
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.client is not None:
            self.client.close()
            self.client = None
        log.info("tracehouse stopped")

    def schema_options(self) -> storage.SchemaOptions:
        return self.settings.schema_options()

    # -- start sequence ----------------------------------------------------------------------

    def _connect(self) -> Any:
        """A client for the configured URL: the embedded engine at once, a server's on first
        use (``LazyClient``), so that nothing at start needs the server to answer."""
        s = self.settings
        if s.embedded:
            return storage.connect(s.resolved_clickhouse_url, s.cluster)
        return LazyClient(lambda: storage.connect(s.resolved_clickhouse_url, s.cluster))

    def _prepare_storage(self) -> None:
        """Check the server's version and apply pending migrations (with ``auto_migrate``)."""
        storage.require_version(self.client)
        if self.settings.auto_migrate:
            applied = storage.Migrator(self.client, self.schema_options()).migrate()
            if applied:
                log.info("schema migrations applied: %s", ", ".join(applied))
        self._migrated = not storage.Migrator(self.client, self.schema_options()).pending()

    def _prepare_storage_until_done(self) -> None:
        """The background half of a start without ClickHouse: retry ``_prepare_storage`` every
        ``insert_retry_interval_s`` until it succeeds, then let inserts and the worker run.
        Logs when the state changes, not at every attempt."""
        while not self._stopping.wait(self.settings.insert_retry_interval_s):
            try:
                self._prepare_storage()
            except Exception as exc:
                previous = self._storage_error
                was_unusable = previous is not None and not is_unreachable(previous)
                if not is_unreachable(exc) and not was_unusable:  # logged when the state starts
                    log.error("ClickHouse answers but cannot be used: %s", exc)
                self._storage_error = exc
                continue
            log.info(
                "ClickHouse at %s reachable, schema current: inserting what the spool holds",
                _redact(self.settings.resolved_clickhouse_url),
            )
            self._storage_became_ready()
            return

    def _storage_became_ready(self) -> None:
        with self._start_lock:
            if self._stopping.is_set():
                return
            self._storage_error = None
            self._storage_ready.set()
            self._quiet.detach()
            if "worker" in self.settings.roles:
                self._start_worker()

    @property
    def edges(self) -> EdgeWorker | None:
        """The service-graph job while it runs in this process (worker role, leading)."""
        jobs = self._gate.jobs if self._gate is not None else []
        return next((job for job in jobs if isinstance(job, EdgeWorker)), None)

    @property
    def alerting(self) -> AlertWorker | None:
        """The alerting job while it runs in this process (worker role, leading)."""
        jobs = self._gate.jobs if self._gate is not None else []
        return next((job for job in jobs if isinstance(job, AlertWorker)), None)

    # -- wiring ------------------------------------------------------------------------------

    @property
    def insights(self) -> InsightWorker | None:
        """The insights job while it runs in this process (worker role, leading)."""
        jobs = self._gate.jobs if self._gate is not None else []
        return next((job for job in jobs if isinstance(job, InsightWorker)), None)

    def _insight_settings(self) -> InsightSettings:
        s = self.settings
        return InsightSettings(
            interval_s=s.insights_interval_s,
            window_min=s.insights_window_min,
            baseline_min=s.insights_baseline_min,
            factor=s.insights_factor,
            min_calls=s.insights_min_calls,
            error_increase=s.insights_error_increase,
            min_delta_ms=s.insights_min_delta_ms,
            cooldown_min=s.insights_cooldown_min,
        )

    def _worker_jobs(self) -> list[JobFactory]:
        """The worker role's jobs (``start()``/``stop(grace_s)``), each built anew whenever
        this process becomes the leader."""
        edges_client = self._edges_client
        alerting_client = self._alerting_client
        insights_client = self._insights_client
        insight_settings = self._insight_settings()
        s = self.settings
        return [
            lambda: EdgeWorker(EdgeBuilder(edges_client), interval_s=15.0),
            lambda: AlertWorker(
                alerting_client,
                s.alert_rules_file,
                s.resolved_alert_external_url,
                egress=EgressPolicy(s.webhook_allow, s.webhook_deny),
            ),
            lambda: InsightWorker(insights_client, insight_settings),
        ]

    def _start_worker(self) -> None:
        """Run the worker jobs while this process leads (docs/decisions/0012); without
        leader election (embedded: one process owns the data), always."""
        s = self.settings
        leadership: Leadership = AlwaysLeader()
        if s.resolved_leader_election:
            self._lease_client = self._connect()
            store = make_store(s.resolved_leader_store, self._lease_client, s.cluster)
            self.leader = LeaderElector(
                store,
                lease_s=s.leader_lease_s,
                renew_s=s.leader_renew_s,
                settle_s=s.leader_settle_s,
            )
            self.leader.start()
            leadership = self.leader
        self._gate = LeaderGate(leadership, self._worker_jobs())
        self._gate.start()

    def _start_ingest(self) -> Any:
        s = self.settings
        if self._sink_override is not None:
            sink: Sink = self._sink_override
        else:
            self._writer = storage.ClickHouseWriter(
                self._connect,
                embedded=s.embedded,
                max_value_length=s.max_attribute_value_length,
                pool_size=2 * s.ingest_writers,
                limits=s.item_limits(),
            )
            sink = self._writer
        spool = Spool(s.resolved_spool_dir, s.spool_max_bytes)
        limits = PipelineLimits(
            batch_max_rows=s.batch_max_rows,
            queue_max_rows=s.queue_max_rows,
            spool_flush_s=s.spool_flush_ms / 1000,
            retry_interval_s=s.insert_retry_interval_s,
            drain_timeout_s=s.drain_timeout_s,
            dedup_window_s=s.dedup_window_s,
            dedup_max_entries=s.dedup_max_entries,
            writers_per_signal=s.ingest_writers,
        )
        gated = _AfterStorageReady(sink, self._storage_ready, self._stopping)
        self.pipeline = IngestPipeline(gated, spool, limits)
        self.pipeline.start()
        receiver = OtlpReceiver(self.pipeline, s.item_limits())
        self._grpc = ingest.create_grpc_server(
            receiver,
            s.max_request_bytes,
            s.request_timeout_s,
            interceptors=[GrpcIngestAccess(self.access, s.ingest_token_header)],
        )
        self.ports.grpc = self._grpc.add_insecure_port(f"{_grpc_host(s.host)}:{s.grpc_port}")
        if self.ports.grpc == 0:
            raise OSError(f"cannot listen for OTLP/gRPC on {s.host}:{s.grpc_port}")
        self._grpc.start()
        http_app = ingest.create_http_app(receiver, s.max_request_bytes, s.request_timeout_s)
        return IngestAccess(http_app, self.access, s.ingest_token_header)

    def _api_app(self) -> FastAPI:
        app = FastAPI(title="tracehouse", version=__version__)
        app.include_router(health_router(self._readiness))
        if "query" in self.settings.roles:
            slow = SlowServiceDefaults(
                threshold_ms=self.settings.slow_service_p99_ms,
                factor=self.settings.slow_service_factor,
                min_calls=self.settings.slow_service_min_calls,
            )
            # Reads obey the service scope of the request's token (tracehouse/access/scope.py).
            scoped = ScopedClient(self.client)
            app.include_router(read_router(scoped, slow))
            app.include_router(jaeger_router(scoped))
            app.include_router(alerting_router(scoped, self.settings.alert_rules_file))
            app.include_router(diagnosis_router(scoped), prefix="/api/v1")
            app.include_router(audit_router(self.client), prefix="/api/v1")
            app.include_router(ui_router())  # the web UI: / and /ui/*
        if self.settings.cors_allow_origins:
            app.add_middleware(
                CORSMiddleware,
                allow_origins=self.settings.cors_allow_origins,
                allow_methods=["*"],
                allow_headers=["authorization", "content-type"],
            )
        app.add_exception_handler(OperationalError, self._storage_unavailable)
        # Outermost: tokens, roles, scope, audit of changes, security headers.
        app.add_middleware(ApiAccess, access=self.access, audit=AuditLog(self.client))
        return app

    async def _storage_unavailable(self, request: Request, exc: Exception) -> JSONResponse:
        """A query while ClickHouse cannot be reached: 503 with the reason, not a 500."""
        return JSONResponse(
            {"detail": f"{self._unreachable_reason(exc)}; retry later"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    def _readiness(self) -> str | None:
        error = self._storage_error
        if error is not None and not self._storage_ready.is_set():
            return self._unreachable_reason(error)
        if not self._migrated and self.client is not None:
            # Another process (`tracehouse migrate`, a Kubernetes Job) may have applied the
            # migrations since this one started: look again until it has.
            self._migrated = self._schema_is_current()
        if not self._migrated:
            return "schema migrations pending: run `tracehouse migrate`"
        if self.client is None:
            return "storage not connected"
        try:
            self.client.command("SELECT 1")
        except Exception as exc:
            return self._unreachable_reason(exc)
        if self.pipeline is not None and self.pipeline.degraded:
            return "ClickHouse inserts failing; ingest keeps accepting into the spool"
        return None

    def _unreachable_reason(self, exc: BaseException) -> str:
        reason = f"ClickHouse unreachable: {unreachable_reason(exc)}"
        if "ingest" in self.settings.roles:
            reason += "; ingest accepting into the spool"
        return reason

    def _schema_is_current(self) -> bool:
        try:
            applied = storage.Migrator(self.client, self.schema_options()).applied_versions()
        except Exception:  # no migrations table yet, or ClickHouse unreachable
            return False
        return {m.version for m in load_migrations()} <= applied

    def _serve_asgi(self, apps: list[tuple[Any, socket.socket]]) -> None:
        for app, _ in apps:
            config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
            self._asgi.servers.append(uvicorn.Server(config))

        async def serve_all() -> None:
            await asyncio.gather(
                *(
                    server.serve(sockets=[sock])
                    for server, (_, sock) in zip(self._asgi.servers, apps, strict=True)
                )
            )

        self._asgi.thread = threading.Thread(target=asyncio.run, args=(serve_all(),), name="asgi")
        self._asgi.thread.start()
        deadline = time.monotonic() + 30
        while not all(server.started for server in self._asgi.servers):
            if time.monotonic() > deadline or not self._asgi.thread.is_alive():
                raise RuntimeError("HTTP servers did not start")
            time.sleep(0.01)


class _QuietConnectionErrors(logging.Filter):
    """Drops the warnings urllib3 and clickhouse-connect log at every failed connection, while
    attached: between a start without ClickHouse and its first answer, the state is logged
    once by tracehouse, not at every retry (and every API request) by the HTTP client."""

    LOGGERS = ("urllib3.connectionpool", "clickhouse_connect.driver._backend.http_sync")

    def attach(self) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).addFilter(self)

    def detach(self) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        return False


class _AfterStorageReady:
    """The sink, once storage is ready: until then an insert waits (what it would insert is
    acknowledged and in the spool), so nothing is inserted into tables not yet created. At stop
    it gives up waiting, and the data stays in the spool for the next start."""

    def __init__(self, sink: Sink, ready: threading.Event, stopping: threading.Event) -> None:
        self._sink = sink
        self._ready = ready
        self._stopping = stopping

    def insert(self, signal: Signal, files: list[Path], dedup_token: str | None = None) -> None:
        while not self._ready.wait(0.2):
            if self._stopping.is_set():
                raise ConnectionError("ClickHouse not reached since the start; kept in the spool")
        self._sink.insert(signal, files, dedup_token)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP;
    # with proto 0 every response written in two parts waited ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc}") from exc
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def _grpc_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
