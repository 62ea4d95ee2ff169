"""The ``tracehouse`` command: ``serve``, ``migrate``, ``bench``, ``report``."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
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
    options = settings.schema_options()
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
    from tracehouse.bench.ingest import run_ingest_bench

    return run_ingest_bench(args)


def _cmd_bench_query(args: argparse.Namespace) -> int:
    from tracehouse.bench.query import run_query_bench

    return run_query_bench(args)


def _cmd_bench_metrics(args: argparse.Namespace) -> int:
    from tracehouse.bench.metrics import run_metrics_bench

    return run_metrics_bench(args)


def _cmd_bench_diagnosis(args: argparse.Namespace) -> int:
    from tracehouse.bench.diagnosis import run_diagnosis_bench

    return run_diagnosis_bench(args)


def _cmd_bench_soak(args: argparse.Namespace) -> int:
    from tracehouse.bench.soak import run_soak_bench

    return run_soak_bench(args)


def _cmd_bench_fuzz(args: argparse.Namespace) -> int:
    from tracehouse.bench.fuzz import run_fuzz_bench

    return run_fuzz_bench(args)


def _cmd_bench_alerting(args: argparse.Namespace) -> int:
    from tracehouse.alerting.bench import run_alerting_bench

    return run_alerting_bench(args)


_WINDOW_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Columns of the report table and how wide a text cell may grow before it is cut.
_REPORT_HEADINGS = {"error_rate": "err%", "total_ms": "total_ms", "rank": "#"}
_MAX_CELL = 60


def _window_seconds(text: str) -> float:
    """``90s``, ``15m``, ``1h``, ``2d`` (or plain seconds) as seconds; ArgumentTypeError else."""
    value = text.strip().lower()
    unit = _WINDOW_UNITS.get(value[-1:])
    number = value[:-1] if unit is not None else value
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a window such as 15m, 1h or 2d")
    return seconds


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if column == "error_rate":
        return f"{float(value) * 100:.1f}"
    if isinstance(value, float):
        return f"{value:,.3f}" if column != "rps" else f"{value:,.4f}"
    text = str(value)
    return text if len(text) <= _MAX_CELL else text[: _MAX_CELL - 1] + "…"


def format_report(report: dict[str, Any]) -> str:
    """A top-N report answer as a fixed-width table: a title line, a heading, one line per row
    (text left-aligned, numbers right-aligned)."""
    columns: list[str] = report["columns"]
    rows: list[dict[str, Any]] = report["rows"]
    title = f"top {report['entity']} by {report['by']}, {report['start']} .. {report['end']}" + (
        f" (kinds: {', '.join(report['kinds'])})" if report.get("kinds") else ""
    )
    if not rows:
        return title + "\n(no data in this window)"
    cells = [[_cell(c, row.get(c)) for c in columns] for row in rows]
    headings = [_REPORT_HEADINGS.get(c, c) for c in columns]
    numeric = [
        all(row.get(c) is None or isinstance(row.get(c), int | float) for row in rows)
        for c in columns
    ]
    widths = [max(len(headings[i]), *(len(line[i]) for line in cells)) for i in range(len(columns))]

    def line(values: list[str]) -> str:
        parts = [
            v.rjust(widths[i]) if numeric[i] else v.ljust(widths[i]) for i, v in enumerate(values)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([title, line(headings), *(line(c) for c in cells)])


def _cmd_report(args: argparse.Namespace) -> int:
    end: float = args.end if args.end is not None else time.time()
    start = args.start if args.start is not None else str(end - args.window)
    params: dict[str, Any] = {"entity": args.entity, "n": args.n, "start": start, "end": str(end)}
    if args.by:
        params["by"] = args.by
    if args.kind:
        params["kind"] = args.kind
    base = args.url.rstrip("/")
    url = f"{base}/api/v1/reports/top?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            report = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        body = exc.read().decode("utf-8", "replace")
        try:
            detail = json.loads(body).get("detail", body)
        except ValueError:
            detail = body
        if isinstance(detail, list):
            detail = "; ".join(
                f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg')}" for d in detail
            )
        print(f"tracehouse: the server at {base} answered {exc.code}: {detail}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(
            f"tracehouse: cannot reach the tracehouse server at {base} ({reason}); "
            "is `tracehouse serve` running there? (--url)",
            file=sys.stderr,
        )
        return 1
    print(format_report(report))
    return 0


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
    bench_ingest.add_argument(
        "--engine-batch", type=int, default=50_000, help="items per insert of the engine profile"
    )
    bench_ingest.add_argument(
        "--no-engine", dest="engine", action="store_false", help="skip the engine profile"
    )
    bench_ingest.add_argument(
        "--engine-only", action="store_true", help="only the engine profile, no server"
    )
    bench_ingest.set_defaults(func=_cmd_bench)
    bench_query = bench_sub.add_parser(
        "query", help="read-API latency on seeded spans, beside raw-span scans"
    )
    bench_query.add_argument("--spans", type=int, default=10_000_000, help="spans to seed")
    bench_query.add_argument("--hours", type=int, default=25, help="hours the spans cover (>= 24)")
    bench_query.add_argument("--batch", type=int, default=1_000_000, help="spans per insert")
    bench_query.add_argument("--runs", type=int, default=10, help="timed API requests per row")
    bench_query.add_argument("--raw-runs", type=int, default=3, help="timed raw scans per row")
    bench_query.add_argument("--seed", type=int, default=7, help="seed of the generated data")
    bench_query.add_argument(
        "--data-dir", help="engine directory, kept afterwards (default: a temporary one)"
    )
    bench_query.add_argument(
        "--reuse", action="store_true", help="measure the spans already in --data-dir"
    )
    bench_query.add_argument(
        "--settle", type=float, default=120.0, help="seconds to wait for merges before timing"
    )
    bench_query.add_argument("--markdown", action="store_true", help="also print Markdown")
    bench_query.set_defaults(func=_cmd_bench_query)
    bench_metrics = bench_sub.add_parser(
        "metrics", help="OTLP metric points/s ingested, and 1 h metric query latency"
    )
    bench_metrics.add_argument("--points", type=int, default=1_000_000, help="points to send")
    bench_metrics.add_argument("--series", type=int, default=1000, help="instances sending")
    bench_metrics.add_argument("--batch", type=int, default=1000, help="points per request")
    bench_metrics.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    bench_metrics.add_argument(
        "--transport", choices=["grpc", "http", "both", "none"], default="both"
    )
    bench_metrics.add_argument(
        "--query-series", type=int, default=1000, help="series per type to query (0: none)"
    )
    bench_metrics.add_argument("--runs", type=int, default=5, help="timed runs per query")
    bench_metrics.add_argument("--markdown", action="store_true", help="also print Markdown")
    bench_metrics.set_defaults(func=_cmd_bench_metrics)
    bench_diagnosis = bench_sub.add_parser(
        "diagnosis", help="rank of the true cause over simulated incidents, and diagnosis latency"
    )
    bench_diagnosis.add_argument("--scenarios", type=int, default=50, help="incidents simulated")
    bench_diagnosis.add_argument("--traces", type=int, default=200, help="traces per window")
    bench_diagnosis.add_argument("--sample", type=int, default=30, help="diagnosis sample size")
    bench_diagnosis.add_argument(
        "--background-spans", type=int, default=0, help="seed this many spans of other traffic"
    )
    bench_diagnosis.add_argument("--seed", type=int, default=1, help="seed of the scenarios")
    bench_diagnosis.add_argument(
        "--data-dir", help="engine directory, kept afterwards (default: a temporary one)"
    )
    bench_diagnosis.set_defaults(func=_cmd_bench_diagnosis)
    bench_soak = bench_sub.add_parser(
        "soak", help="sustained load at 80%% of the measured maximum: RSS curve, errors, losses"
    )
    bench_soak.add_argument("--minutes", type=float, default=10.0, help="length of the soak")
    bench_soak.add_argument("--fraction", type=float, default=0.8, help="of the maximum (0.8)")
    bench_soak.add_argument("--calibrate", type=float, default=15.0, help="seconds at full speed")
    bench_soak.add_argument("--concurrency", type=int, default=8, help="OTLP/HTTP clients")
    bench_soak.add_argument("--batch", type=int, default=100, help="spans per request")
    bench_soak.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples")
    bench_soak.set_defaults(func=_cmd_bench_soak)
    bench_fuzz = bench_sub.add_parser(
        "fuzz", help="hostile OTLP/HTTP requests: outcomes by status, no 500s, peak RSS"
    )
    bench_fuzz.add_argument("--cases", type=int, default=100_000, help="requests sent")
    bench_fuzz.add_argument("--seed", type=int, default=1, help="seed of the cases")
    bench_fuzz.add_argument("--progress", type=int, default=5_000, help="cases between reports")
    bench_fuzz.set_defaults(func=_cmd_bench_fuzz)
    bench_alerting = bench_sub.add_parser(
        "alerting", help="alert time to detect, and the evaluation time of many rules"
    )
    bench_alerting.add_argument("--trials", type=int, default=3, help="time-to-detect trials")
    bench_alerting.add_argument("--rules", type=int, default=1000, help="rules evaluated")
    bench_alerting.add_argument("--spans", type=int, default=10_000_000, help="spans to seed")
    bench_alerting.add_argument("--batch", type=int, default=1_000_000, help="spans per insert")
    bench_alerting.set_defaults(func=_cmd_bench_alerting)

    report = sub.add_parser(
        "report", help="top-N services, operations, SQL or errors from a running server"
    )
    report.add_argument(
        "--window", type=_window_seconds, default=3600.0, help="last 15m, 1h, 2d... (1h)"
    )
    report.add_argument("--start", help="RFC 3339 or epoch seconds (instead of --window)")
    report.add_argument("--end", type=float, help="epoch seconds (default now)")
    report.add_argument(
        "--entity", choices=["service", "operation", "sql", "edge", "error"], default="service"
    )
    report.add_argument(
        "--by",
        choices=["p99", "calls", "errors", "error_rate", "total_time"],
        help="ranking (default total_time; errors for --entity error)",
    )
    report.add_argument("-n", type=int, default=10, help="rows, 1..100 (10)")
    report.add_argument("--kind", help="span kinds: entry, all, server, client, ...")
    report.add_argument(
        "--url", default="http://localhost:8080", help="the server's API (http://localhost:8080)"
    )
    report.add_argument("--timeout", type=float, default=30.0, help="seconds (30)")
    report.set_defaults(func=_cmd_report)
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
