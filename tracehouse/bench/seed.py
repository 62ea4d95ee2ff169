"""Realistic spans generated inside ClickHouse, for ``tracehouse bench query``.

``INSERT INTO otel_traces … SELECT … FROM numbers(…)``: the engine makes the rows itself, so
ten million spans take minutes, and the materialized views fill the rollups (``otel_red_1m``,
``otel_db_1m``, the trace-id index) exactly as they do for real ingest.

The shop being traced: 40 services in three tiers — 8 entry points (web, BFFs, gateways),
16 mid-tier HTTP services, 16 gRPC back ends. Every trace has the same ten-span shape:

====  =========================  =======  ==============================================
pos   span                       parent   what
====  =========================  =======  ==============================================
0     entry service, server      —        ``GET /api/cart`` — root, so a ``user`` edge
1     entry service, client      0        HTTP call to the mid-tier service
2     mid-tier service, server   1        ``GET /v1/cart/items/{id}``
3     mid-tier service, client   2        SQL (PostgreSQL) on its own database
4     mid-tier service, client   2        gRPC call to the back end
5     back end, server           4        ``shop.inventory.v1.Api/GetStock``
6     back end, client           5        SQL (PostgreSQL or MySQL) on its own database
7     back end, client           5        Redis, a shared cache
8     entry service, internal    0        rendering the response
9     mid-tier service, producer 2        Kafka ``send`` to its events topic
====  =========================  =======  ==============================================

Which services, routes, statements and durations a trace gets is drawn from hashes of the
trace number (deterministic per ``seed``). Each entry point calls 4 of the mid-tier services
and each of those 3 back ends, so the graph has ~80 service edges plus databases, the cache,
Kafka and ``user``. Statements come from 8 templates per service (tables named after it,
literals varying), ~300 fingerprints in all, one of them slow (median 350 ms). Durations
are log-normal per span and nest (a server span covers its children). ~1 % of traces fail
in a back end's database call and the error travels up; ``payment`` and ``fraud-check`` fail
more often, and ``fraud-check``'s SQL is four times slower in the last two hours of the range
(a regression for the slow-service view to find). Half the services speak the new database
semantic conventions (``db.system.name``, ``db.query.text``, ``db.namespace``), half the old
ones (``db.system``, ``db.statement``, ``db.name``). Spans carry about ten attributes,
resources eleven; failed spans an ``exception`` event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SPANS_PER_TRACE = 10

ENTRY_SERVICES = (
    "web-frontend",
    "mobile-bff",
    "api-gateway",
    "partner-api",
    "admin-portal",
    "checkout-web",
    "search-web",
    "graphql-gateway",
)
MIDDLE_SERVICES = (
    "cart",
    "checkout",
    "catalog",
    "search",
    "recommendation",
    "user-profile",
    "auth",
    "pricing",
    "promotions",
    "reviews",
    "wishlist",
    "order",
    "shipping-quote",
    "loyalty",
    "notification-api",
    "session",
)
BACKEND_SERVICES = (
    "inventory",
    "payment",
    "ledger",
    "fraud-check",
    "shipping",
    "tax",
    "warehouse",
    "customer",
    "email-sender",
    "sms-sender",
    "currency",
    "media",
    "geo",
    "audit",
    "billing",
    "identity",
)
SERVICES = ENTRY_SERVICES + MIDDLE_SERVICES + BACKEND_SERVICES

ENTRY_ROUTES = (
    ("GET", "/api/products/{id}"),
    ("GET", "/api/products"),
    ("GET", "/api/cart"),
    ("POST", "/api/cart/items"),
    ("DELETE", "/api/cart/items/{id}"),
    ("POST", "/api/checkout"),
    ("GET", "/api/orders/{id}"),
    ("GET", "/api/orders"),
    ("GET", "/api/search"),
    ("POST", "/api/login"),
    ("GET", "/api/account"),
    ("PUT", "/api/account/address"),
)
MIDDLE_ROUTES = (
    ("GET", "/items/{id}"),
    ("GET", "/items"),
    ("POST", "/items"),
    ("PUT", "/items/{id}"),
    ("DELETE", "/items/{id}"),
    ("GET", "/search"),
    ("POST", "/batch"),
    ("GET", "/summary"),
)
GRPC_METHODS = ("Get", "List", "Create", "Update", "Reserve", "Check")

# Statement templates: {x} = the service (tables are its own), {n} {m} {k} = numbers,
# {d} = a day of the month. (template, median duration in ms, db.operation.name, table)
SQL_TEMPLATES = (
    ("SELECT id, status, total_cents, updated_at FROM {x}_orders WHERE id = {n}", 1.2),
    ("SELECT * FROM {x}_items WHERE order_id = {n} ORDER BY created_at DESC LIMIT 50", 3.0),
    (
        "UPDATE {x}_orders SET status = 'paid', updated_at = now() "
        "WHERE id = {n} AND version = {m}",
        2.5,
    ),
    (
        "INSERT INTO {x}_events (id, order_id, kind, payload) "
        'VALUES ({n}, {m}, \'status_changed\', \'{"from": "new", "to": "paid"}\')',
        1.8,
    ),
    (
        "SELECT count(*) FROM {x}_items WHERE created_at > '2026-11-{d}' "
        "AND status IN ('new', 'paid', 'shipped')",
        12.0,
    ),
    (
        "SELECT i.id, i.sku, p.amount FROM {x}_items i JOIN prices p ON p.sku = i.sku "
        "WHERE i.order_id IN ({n}, {m}, {k})",
        6.0,
    ),
    ("DELETE FROM {x}_sessions WHERE expires_at < '2026-11-{d} 00:00:00'", 4.0),
    (
        "SELECT customer_id, sum(amount) AS spent FROM {x}_ledger "
        "WHERE created_at BETWEEN '2026-10-{d}' AND '2026-11-{d}' "
        "GROUP BY customer_id ORDER BY spent DESC LIMIT 100",
        350.0,
    ),
)
# How often each template is picked: 1-based indexes into SQL_TEMPLATES, drawn uniformly
# (the slow report query is 1 call in 20).
SQL_PICK = (1, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 6, 6, 6, 7, 7, 8)
REDIS_COMMANDS = ("GET {x}:{n}", "HGETALL {x}:profile:{n}", "SET {x}:{n} EX 300", "INCR {x}:hits")
USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_7) AppleWebKit/605.1.15 Version/18.1 Safari",
    "okhttp/4.12.0",
)
LANGUAGES = ("java", "go", "python", "nodejs", "dotnet")


def parameters(
    *, seed: int, first: int, count: int, range_start_ns: int, step_ns: int, regression_ns: int
) -> dict[str, Any]:
    """The bound values of :data:`SEED_SQL` for traces ``first … first + count - 1``: trace
    ``t`` starts at ``range_start_ns + t * step_ns`` (plus jitter below ``step_ns``); the
    regression of ``fraud-check`` applies from ``regression_ns`` on."""
    return {
        "seed": seed,
        "first": first,
        "count": count,
        "range_start_ns": range_start_ns,
        "step_ns": step_ns,
        "regression_ns": regression_ns,
        "entry": list(ENTRY_SERVICES),
        "middle": list(MIDDLE_SERVICES),
        "backend": list(BACKEND_SERVICES),
        "services": list(SERVICES),
        "entry_methods": [m for m, _ in ENTRY_ROUTES],
        "entry_routes": [r for _, r in ENTRY_ROUTES],
        "middle_methods": [m for m, _ in MIDDLE_ROUTES],
        "middle_routes": [r for _, r in MIDDLE_ROUTES],
        "grpc_methods": list(GRPC_METHODS),
        "sql_templates": [t for t, _ in SQL_TEMPLATES],
        "sql_medians": [m for _, m in SQL_TEMPLATES],
        "sql_pick": list(SQL_PICK),
        "redis_commands": list(REDIS_COMMANDS),
        "user_agents": list(USER_AGENTS),
        "languages": list(LANGUAGES),
    }


def _uniform(tag: str) -> str:
    """A uniform number in (0, 1), fixed per seed, trace and ``tag``."""
    return f"((cityHash64({{seed:UInt64}}, t, '{tag}') % 1000000) + 0.5) / 1000000"


def _pick(array: str, tag: str) -> str:
    """An element of the array parameter ``array``, drawn per trace."""
    return (
        f"{{{array}:Array(String)}}[cityHash64({{seed:UInt64}}, t, '{tag}') "
        f"% length({{{array}:Array(String)}}) + 1]"
    )


def _lognormal_ns(median_ms: str, sigma: float, tag: str) -> str:
    """A log-normal duration in ns (Box-Muller from two per-trace uniforms)."""
    return (
        f"({median_ms}) * 1e6 * exp({sigma} * sqrt(-2 * log({_uniform(tag + '1')}))"
        f" * cos(2 * pi() * {_uniform(tag + '2')}))"
    )


def _number(tag: str, below: int) -> str:
    return f"toString(cityHash64({{seed:UInt64}}, t, '{tag}') % {below})"


def _fill(template: str, x: str) -> str:
    """A statement template with its placeholders filled for this trace."""
    return (
        f"replaceAll(replaceAll(replaceAll(replaceAll(replaceAll({template}, '{{x}}', {x}), "
        f"'{{n}}', {_number('n', 100000)}), '{{m}}', {_number('m', 100000)}), "
        f"'{{k}}', {_number('k', 100000)}), "
        f"'{{d}}', leftPad(toString(cityHash64({{seed:UInt64}}, t, 'd') % 28 + 1), 2, '0'))"
    )


# One row per trace: who is called, what, how long every span takes and when it starts
# (offsets in ns from the trace's start), and which spans fail. Durations nest: a server
# span lasts its children plus its own time; a client span its server plus the network.
_TRACES = f"""
SELECT
    number AS t,
    toInt64({{range_start_ns:Int64}} + number * {{step_ns:UInt64}}
        + cityHash64({{seed:UInt64}}, number, 'jitter') % {{step_ns:UInt64}}) AS start_ns,
    lower(hex(sipHash128({{seed:UInt64}}, number))) AS trace_id,
    arrayMap(i -> lower(hex(reinterpretAsFixedString(cityHash64({{seed:UInt64}}, number, i)))),
             range({SPANS_PER_TRACE})) AS span_ids,
    cityHash64({{seed:UInt64}}, number, 'route') AS h,
    h % length({{entry:Array(String)}}) AS ai,
    (ai * 2 + intDiv(h, 8) % 4) % length({{middle:Array(String)}}) AS bi,
    (bi + intDiv(h, 32) % 3) % length({{backend:Array(String)}}) AS ci,
    {{entry:Array(String)}}[ai + 1] AS svc_a,
    {{middle:Array(String)}}[bi + 1] AS svc_b,
    {{backend:Array(String)}}[ci + 1] AS svc_c,
    replaceAll(svc_b, '-', '_') AS x_b,
    replaceAll(svc_c, '-', '_') AS x_c,
    -- Half the database-calling services use the new semantic conventions.
    bi % 2 = 0 AS new_conv_b,
    ci % 2 = 1 AS new_conv_c,
    if(ci % 3 = 0, 'mysql', 'postgresql') AS db_c,
    intDiv(h, 128) % length({{entry_routes:Array(String)}}) + 1 AS route_a,
    {{entry_methods:Array(String)}}[route_a] AS method_a,
    {{entry_routes:Array(String)}}[route_a] AS template_a,
    intDiv(h, 2048) % length({{middle_routes:Array(String)}}) + 1 AS route_b,
    {{middle_methods:Array(String)}}[route_b] AS method_b,
    concat('/v1/', svc_b, {{middle_routes:Array(String)}}[route_b]) AS template_b,
    concat('shop.', x_c, '.v1.Api') AS rpc_service,
    {_pick("grpc_methods", "rpc")} AS rpc_method,
    {{sql_pick:Array(UInt8)}}[cityHash64({{seed:UInt64}}, number, 'sqlb')
        % length({{sql_pick:Array(UInt8)}}) + 1] AS sql_b,
    {{sql_pick:Array(UInt8)}}[cityHash64({{seed:UInt64}}, number, 'sqlc')
        % length({{sql_pick:Array(UInt8)}}) + 1] AS sql_c,
    {_fill("{sql_templates:Array(String)}[sql_b]", "x_b")} AS statement_b,
    {_fill("{sql_templates:Array(String)}[sql_c]", "x_c")} AS statement_c,
    {_fill(_pick("redis_commands", "redis"), "x_c")} AS redis_command,
    {_number("n", 100000)} AS item_id,
    -- Failures: a back end's SQL call fails and the error travels up to the root.
    {_uniform("err")} < if(svc_c IN ('payment', 'fraud-check'), 0.03, 0.006) AS err_c,
    err_c OR {_uniform("erra")} < 0.002 AS err_a,
    if(svc_c = 'fraud-check' AND start_ns >= {{regression_ns:Int64}}, 4.0, 1.0) AS slow_c,
    -- Durations (ns).
    {_lognormal_ns("{sql_medians:Array(Float64)}[sql_b]", 0.6, "d3")} AS d3,
    {_lognormal_ns("{sql_medians:Array(Float64)}[sql_c]", 0.6, "d6")} * slow_c AS d6,
    {_lognormal_ns("0.4", 0.8, "d7")} AS d7,
    {_lognormal_ns("1.5", 0.7, "d9")} AS d9,
    {_lognormal_ns("2.0", 0.6, "d8")} AS d8,
    {_lognormal_ns("0.8", 0.5, "sc")} AS self_c,
    {_lognormal_ns("1.5", 0.5, "sb")} AS self_b,
    {_lognormal_ns("3.0", 0.5, "sa")} AS self_a,
    (300 + 700 * {_uniform("net")}) * 1000 AS net,
    -- Start offsets (ns) and the nesting durations.
    500000 AS o1,
    o1 + net / 2 AS o2,
    o2 + 200000 AS o3,
    o3 + d3 + 100000 AS o4,
    o4 + net / 2 AS o5,
    o5 + 150000 AS o6,
    o6 + d6 + 100000 AS o7,
    o7 + d7 + self_c - o5 AS d5,
    d5 + net AS d4,
    o4 + d4 + 100000 AS o9,
    o9 + d9 + self_b - o2 AS d2,
    d2 + net AS d1,
    o1 + d1 + 100000 AS o8,
    o8 + d8 + self_a AS d0,
    [0, o1, o2, o3, o4, o5, o6, o7, o8, o9] AS offsets,
    [d0, d1, d2, d3, d4, d5, d6, d7, d8, d9] AS durations
FROM numbers({{first:UInt64}}, {{count:UInt64}})
"""


@dataclass(frozen=True)
class _SpanShape:
    """One position of the trace shape: SQL expressions over a row of ``_TRACES``."""

    position: int
    parent: int | None
    kind: str
    service: str
    name: str
    error: str
    scope: str
    attributes: dict[str, str] = field(default_factory=dict)
    where: str = "1"


def _s(text: str) -> str:
    """A fixed string as an SQL literal (our own constants only: no quotes inside)."""
    assert "'" not in text and "\\" not in text
    return f"'{text}'"


_HTTP_STATUS = "if({err}, '500', '200')"


def _db_attributes(
    new: bool, system: str, namespace: str, statement: str, host: str, port: str
) -> dict[str, str]:
    keys = (
        ("db.system.name", "db.namespace", "db.query.text", "server.address", "server.port")
        if new
        else ("db.system", "db.name", "db.statement", "net.peer.name", "net.peer.port")
    )
    values = (system, namespace, statement, host, port)
    attributes = dict(zip(keys, values, strict=True))
    attributes.update(
        {
            "db.operation.name" if new else "db.operation": f"splitByChar(' ', {statement})[1]",
            "db.user": _s("app"),
            "network.peer.address": "concat('10.2.', toString(ci), '.17')",
            "thread.name": _s("db-pool-3"),
            "db.connection_string" if not new else "db.client.connection.pool.name": _s("main"),
        }
    )
    return attributes


def _shapes() -> tuple[_SpanShape, ...]:
    url_a = "replaceAll(template_a, '{id}', item_id)"
    url_b = "replaceAll(template_b, '{id}', item_id)"
    host_b = "concat(svc_b, '.shop.svc.cluster.local')"
    host_c = "concat(svc_c, '.shop.svc.cluster.local')"
    db_b = "concat(svc_b, '-db.prod.internal')"
    db_c = "concat(svc_c, '-db.prod.internal')"
    client_ip = "concat('203.0.113.', toString(cityHash64(t, 'ip') % 250 + 1))"
    shapes = [
        _SpanShape(
            0,
            None,
            "Server",
            "svc_a",
            "concat(method_a, ' ', template_a)",
            "err_a",
            _s("io.opentelemetry.tomcat-10.0"),
            {
                "http.request.method": "method_a",
                "http.route": "template_a",
                "url.path": url_a,
                "url.scheme": _s("https"),
                "http.response.status_code": _HTTP_STATUS.format(err="err_a"),
                "server.address": _s("shop.example.com"),
                "server.port": _s("443"),
                "network.protocol.version": _s("2"),
                "user_agent.original": _pick("user_agents", "ua"),
                "client.address": client_ip,
            },
        ),
        _SpanShape(
            1,
            0,
            "Client",
            "svc_a",
            "method_b",
            "err_c",
            _s("io.opentelemetry.okhttp-3.0"),
            {
                "http.request.method": "method_b",
                "url.full": f"concat('http://', {host_b}, ':8080', {url_b})",
                "server.address": host_b,
                "server.port": _s("8080"),
                "http.response.status_code": _HTTP_STATUS.format(err="err_c"),
                "network.protocol.version": _s("1.1"),
                "network.peer.address": "concat('10.1.', toString(bi), '.21')",
                "network.peer.port": _s("8080"),
                "thread.name": _s("http-nio-8080-exec-4"),
            },
        ),
        _SpanShape(
            2,
            1,
            "Server",
            "svc_b",
            "concat(method_b, ' ', template_b)",
            "err_c",
            _s("opentelemetry.instrumentation.fastapi"),
            {
                "http.request.method": "method_b",
                "http.route": "template_b",
                "url.path": url_b,
                "url.scheme": _s("http"),
                "http.response.status_code": _HTTP_STATUS.format(err="err_c"),
                "server.address": host_b,
                "server.port": _s("8080"),
                "network.protocol.version": _s("1.1"),
                "client.address": "concat('10.0.', toString(ai), '.9')",
                "user_agent.original": _s("okhttp/4.12.0"),
            },
        ),
        _SpanShape(
            4,
            2,
            "Client",
            "svc_b",
            "concat(rpc_service, '/', rpc_method)",
            "err_c",
            _s("opentelemetry.instrumentation.grpc"),
            {
                "rpc.system": _s("grpc"),
                "rpc.service": "rpc_service",
                "rpc.method": "rpc_method",
                "rpc.grpc.status_code": "if(err_c, '2', '0')",
                "server.address": host_c,
                "server.port": _s("50051"),
                "network.peer.address": "concat('10.2.', toString(ci), '.5')",
                "network.transport": _s("tcp"),
                "network.type": _s("ipv4"),
                "thread.name": _s("grpc-default-executor-1"),
            },
        ),
        _SpanShape(
            5,
            4,
            "Server",
            "svc_c",
            "concat(rpc_service, '/', rpc_method)",
            "err_c",
            _s("go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc"),
            {
                "rpc.system": _s("grpc"),
                "rpc.service": "rpc_service",
                "rpc.method": "rpc_method",
                "rpc.grpc.status_code": "if(err_c, '2', '0')",
                "server.address": host_c,
                "server.port": _s("50051"),
                "network.peer.address": "concat('10.1.', toString(bi), '.21')",
                "network.transport": _s("tcp"),
                "network.type": _s("ipv4"),
                "client.address": "concat('10.1.', toString(bi), '.21')",
            },
        ),
        _SpanShape(
            7,
            5,
            "Client",
            "svc_c",
            "splitByChar(' ', redis_command)[1]",
            "0",
            _s("go.opentelemetry.io/contrib/instrumentation/github.com/redis/go-redis"),
            {
                "db.system": _s("redis"),
                "db.statement": "redis_command",
                "db.operation": "splitByChar(' ', redis_command)[1]",
                "db.redis.database_index": _s("0"),
                "net.peer.name": _s("redis-cache.prod.internal"),
                "net.peer.port": _s("6379"),
                "network.peer.address": _s("10.3.0.12"),
                "network.transport": _s("tcp"),
                "db.user": _s("default"),
                "thread.name": _s("redis-pool-1"),
            },
        ),
        _SpanShape(
            8,
            0,
            "Internal",
            "svc_a",
            "concat('render ', template_a)",
            "0",
            _s("io.opentelemetry.spring-webmvc-6.0"),
            {
                "code.function.name": _s("renderView"),
                "code.namespace": _s("com.shop.web.ViewRenderer"),
                "code.filepath": _s("ViewRenderer.java"),
                "code.lineno": "toString(cityHash64(t, 'line') % 400 + 20)",
                "thread.name": _s("http-nio-8080-exec-4"),
                "thread.id": "toString(cityHash64(t, 'thread') % 200 + 30)",
                "view.template": "concat(replaceAll(template_a, '/', '.'), '.html')",
                "view.cache_hit": "if(cityHash64(t, 'cache') % 10 < 8, 'true', 'false')",
                "app.items_count": "toString(cityHash64(t, 'items') % 60)",
                "app.tenant": "concat('tenant-', toString(cityHash64(t, 'tenant') % 50))",
            },
        ),
        _SpanShape(
            9,
            2,
            "Producer",
            "svc_b",
            "concat('send ', x_b, '.events')",
            "0",
            _s("io.opentelemetry.kafka-clients-2.6"),
            {
                "messaging.system": _s("kafka"),
                "messaging.destination.name": "concat(x_b, '.events')",
                "messaging.operation.type": _s("send"),
                "messaging.operation.name": _s("send"),
                "messaging.kafka.message.key": "item_id",
                "messaging.destination.partition.id": "toString(cityHash64(t, 'part') % 12)",
                "messaging.client.id": "concat(svc_b, '-producer-1')",
                "server.address": _s("kafka.prod.internal"),
                "server.port": _s("9092"),
                "network.peer.address": _s("10.4.0.7"),
            },
        ),
    ]
    for new in (True, False):
        shapes.append(
            _SpanShape(
                3,
                2,
                "Client",
                "svc_b",
                "concat(splitByChar(' ', statement_b)[1], ' ', x_b, '_db')",
                "0",
                _s("io.opentelemetry.jdbc"),
                _db_attributes(
                    new, _s("postgresql"), "concat(x_b, '_db')", "statement_b", db_b, _s("5432")
                ),
                where="new_conv_b" if new else "NOT new_conv_b",
            )
        )
        shapes.append(
            _SpanShape(
                6,
                5,
                "Client",
                "svc_c",
                "concat(splitByChar(' ', statement_c)[1], ' ', x_c, '_db')",
                "err_c",
                _s("io.opentelemetry.jdbc"),
                _db_attributes(
                    new,
                    "db_c",
                    "concat(x_c, '_db')",
                    "statement_c",
                    db_c,
                    "if(db_c = 'mysql', '3306', '5432')",
                ),
                where="new_conv_c" if new else "NOT new_conv_c",
            )
        )
    return tuple(sorted(shapes, key=lambda s: s.position))


def _map(entries: dict[str, str]) -> str:
    """``map(…)`` of fixed keys, sorted (writers sort attribute maps by key)."""
    return "map(" + ", ".join(f"{_s(k)}, {v}" for k, v in sorted(entries.items())) + ")"


def _resource(service: str) -> str:
    index = f"indexOf({{services:Array(String)}}, {service})"
    pod = f"substring(lower(hex(cityHash64({service}, t % 3))), 1, 5)"
    return _map(
        {
            "service.name": service,
            "service.namespace": _s("shop"),
            "service.version": f"concat('1.', toString({index} % 7), '.', toString({index} % 4))",
            "deployment.environment.name": _s("production"),
            "host.name": f"concat('node-', toString(cityHash64({service}, t % 3) % 12))",
            "k8s.namespace.name": _s("shop"),
            "k8s.pod.name": f"concat({service}, '-7d9f8c6b5-', {pod})",
            "process.pid": f"toString(cityHash64({service}, t % 3) % 30000 + 100)",
            "telemetry.sdk.language": (
                f"{{languages:Array(String)}}[{index} % length({{languages:Array(String)}}) + 1]"
            ),
            "telemetry.sdk.name": _s("opentelemetry"),
            "telemetry.sdk.version": _s("1.44.0"),
        }
    )


_COLUMNS = (
    "Timestamp, TraceId, SpanId, ParentSpanId, TraceState, SpanName, SpanKind, ServiceName, "
    "ResourceAttributes, ScopeName, ScopeVersion, SpanAttributes, Duration, StatusCode, "
    "StatusMessage, `Events.Timestamp`, `Events.Name`, `Events.Attributes`"
)


def _branch(shape: _SpanShape) -> str:
    p = shape.position + 1  # ClickHouse arrays are 1-based
    parent = "''" if shape.parent is None else f"span_ids[{shape.parent + 1}]"
    ts = f"fromUnixTimestamp64Nano(toInt64(start_ns + offsets[{p}]))"
    event_ts = f"fromUnixTimestamp64Nano(toInt64(start_ns + offsets[{p}] + durations[{p}] / 2))"
    err = shape.error
    message = "concat('upstream failed: ', svc_c, ' database error')"
    return f"""
SELECT
    {ts},
    trace_id,
    span_ids[{p}],
    {parent},
    '',
    {shape.name},
    {_s(shape.kind)},
    {shape.service},
    {_resource(shape.service)},
    {shape.scope},
    '2.10.0',
    {_map(shape.attributes)},
    toUInt64(durations[{p}]),
    if({err}, 'Error', 'Unset'),
    if({err}, {message}, ''),
    if({err}, [{event_ts}], CAST([], 'Array(DateTime64(9))')),
    if({err}, ['exception'], CAST([], 'Array(String)')),
    if({err}, [map('exception.message', {message}, 'exception.type', 'java.sql.SQLException')],
       CAST([], 'Array(Map(String, String))'))
FROM traces
WHERE {shape.where}"""


# The seeding statement: SPANS_PER_TRACE spans of every trace in the parameters' range.
SEED_SQL = f"INSERT INTO otel_traces ({_COLUMNS})\nWITH traces AS ({_TRACES})" + "\nUNION ALL".join(
    _branch(shape) for shape in _shapes()
)
