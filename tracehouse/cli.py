"""The ``tracehouse`` command: ``serve``, ``migrate``, ``bench``."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from typing import Any

from pydantic import ValidationError

from tracehouse.config import Settings, load_settings
from tracehouse.storage import StorageConfigError


class _JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def _settings_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML configuration file (or TRACEHOUSE_CONFIG)")
    parser.add_argument("--data-dir", help="directory of the embedded engine and the spool")
    parser.add_argument(
        "--clickhouse-url", help="chdb:///abs/dir or http(s)://user:pass@host:8123/db"
    )
    parser.add_argument("--cluster", help="ClickHouse cluster name: ON CLUSTER DDL")


def _load(args: argparse.Namespace, **extra: Any) -> Settings:
    flags = {
        "data_dir": args.data_dir,
        "clickhouse_url": args.clickhouse_url,
        "cluster": args.cluster,
        **extra,
    }
    return load_settings(args.config, **flags)


def _cmd_serve(args: argparse.Namespace) -> int:
    from tracehouse.app import Tracehouse

    settings = _load(
        args,
        roles=args.roles,
        host=args.host,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        api_port=args.api_port,
    )
    _setup_logging(settings.log_level)
    app = Tracehouse(settings)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    app.start()
    print(
        f"tracehouse is running: OTLP/gRPC :{app.ports.grpc or '-'}  "
        f"OTLP/HTTP :{app.ports.http or '-'}  API http://localhost:{app.ports.api}/  "
        "(Ctrl-C to stop)",
        flush=True,
    )
    stop.wait()
    logging.getLogger("tracehouse").info("stopping: flushing accepted data")
    app.stop()
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    from tracehouse import storage

    settings = _load(args)
    _setup_logging(settings.log_level)
    options = storage.SchemaOptions(
        cluster=settings.cluster,
        traces_retention_days=settings.traces_retention_days,
        logs_retention_days=settings.logs_retention_days,
    )
    if args.print:
        for statement in storage.all_statements(options):
            print(statement + ";\n")
        return 0
    client = storage.connect(settings.resolved_clickhouse_url, settings.cluster)
    applied = storage.Migrator(client, options).migrate()
    print("applied: " + (", ".join(applied) if applied else "nothing, schema is up to date"))
    client.close()
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from tracehouse.bench import run_ingest_bench

    return run_ingest_bench(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tracehouse", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run tracehouse (all roles by default)")
    _settings_args(serve)
    serve.add_argument("--roles", help="comma-separated subset of ingest,query,worker")
    serve.add_argument("--host", help="listen address (default 0.0.0.0)")
    serve.add_argument("--grpc-port", type=int, help="OTLP/gRPC port (default 4317)")
    serve.add_argument("--http-port", type=int, help="OTLP/HTTP port (default 4318)")
    serve.add_argument("--api-port", type=int, help="API and UI port (default 8080)")
    serve.set_defaults(func=_cmd_serve)

    migrate = sub.add_parser("migrate", help="apply schema migrations")
    _settings_args(migrate)
    migrate.add_argument("--print", action="store_true", help="print the DDL, run nothing")
    migrate.set_defaults(func=_cmd_migrate)

    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    bench_ingest = bench_sub.add_parser("ingest", help="OTLP ingest throughput, CPU and RSS")
    bench_ingest.add_argument("--signal", choices=["traces", "logs"], default="traces")
    bench_ingest.add_argument("--spans", type=int, default=1_000_000, help="spans or log records")
    bench_ingest.add_argument("--batch", type=int, default=512, help="spans per request")
    bench_ingest.add_argument("--attributes", type=int, default=10, help="attributes per span")
    bench_ingest.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    bench_ingest.add_argument("--transport", choices=["grpc", "http", "both"], default="grpc")
    bench_ingest.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ValidationError as exc:
        print(f"tracehouse: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    except (OSError, StorageConfigError) as exc:
        print(f"tracehouse: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
