"""The pure part of the diagnosis: critical paths, attribution, error origins, instances and
the ranking over the graph — spans built by hand, no database."""

from __future__ import annotations

import itertools

import pytest

from tracehouse.diagnosis.analysis import (
    Entity,
    SpanRow,
    TraceAnalysis,
    WindowStats,
    analyse_trace,
    critical_path,
    rank,
)

MS = 1_000_000
_ids = itertools.count(1)


def span(
    service: str,
    start_ms: float,
    duration_ms: float,
    parent: SpanRow | None = None,
    kind: str = "server",
    trace: str = "t1",
    **extra: object,
) -> SpanRow:
    return SpanRow(
        trace_id=trace,
        span_id=f"s{next(_ids)}",
        parent_span_id=parent.span_id if parent else "",
        service=service,
        name="op",
        kind=kind,
        start_ns=round(start_ms * MS),
        duration_ns=round(duration_ms * MS),
        failed=bool(extra.pop("failed", False)),
        **extra,  # type: ignore[arg-type]
    )


def call(
    caller: SpanRow, callee: str, start_ms: float, client_ms: float, server_ms: float, **kw: object
) -> tuple[SpanRow, SpanRow]:
    """A client span of ``caller``'s service and the server span of ``callee`` under it."""
    client = span(caller.service, start_ms, client_ms, caller, "client", caller.trace_id)
    server = span(
        callee,
        start_ms + (client_ms - server_ms) / 2,
        server_ms,
        client,
        "server",
        caller.trace_id,
        **kw,
    )
    return client, server


def test_critical_path_follows_the_last_finishing_child_and_adds_up() -> None:
    # root 0..100; a: 10..40 and b: 10..70 in parallel (b ends last), then c: 75..95.
    root = span("root", 0, 100)
    a = span("root", 10, 30, root, "internal")
    b = span("root", 10, 60, root, "internal")
    c = span("root", 75, 20, root, "internal")
    children = {root.span_id: [a, b, c]}
    path = critical_path(root, children)
    assert path[c.span_id] == 20 * MS
    assert path[b.span_id] == 60 * MS
    assert a.span_id not in path  # finished before b did: off the path
    assert path[root.span_id] == (10 + 5 + 5) * MS
    assert sum(path.values()) == root.duration_ns


def test_children_outside_their_parent_are_clipped() -> None:
    root = span("root", 0, 50)
    late = span("root", 40, 30, root, "internal")  # ends 20 ms after its parent
    path = critical_path(root, {root.span_id: [late]})
    assert path[late.span_id] == 10 * MS
    assert sum(path.values()) == 50 * MS


def test_time_is_attributed_to_edges_sql_and_own_code() -> None:
    root = span("front", 0, 100, instance="front-1")
    client, server = call(root, "back", 10, 80, 60, instance="back-1")  # 20 ms on the wire
    query = span(
        "back",
        server.start_ns / MS + 5,
        40,
        server,
        "client",
        fingerprint="00000000000000ab",
        statement="SELECT ?",
        db_system="postgresql",
        peer="db",
    )
    analysis = analyse_trace([root, client, server, query], root.span_id)
    assert analysis is not None
    assert analysis.time_ns == {
        Entity("own_code", "front"): 20 * MS,
        Entity("edge", "front", "back"): 20 * MS,
        Entity("own_code", "back"): 20 * MS,
        Entity("sql", "back", "00000000000000ab"): 40 * MS,
    }
    assert analysis.instance_ns == {("front", "front-1"): 20 * MS, ("back", "back-1"): 20 * MS}
    assert ("front", "back") in analysis.calls and ("back", "db") in analysis.calls


def test_error_origin_is_the_deepest_failed_span_without_failed_children() -> None:
    root = span("front", 0, 100, failed=True)
    client, server = call(root, "mid", 10, 80, 70, failed=True)
    leaf_client, leaf = call(server, "leaf", 20, 30, 20, failed=True)
    ok_client, ok = call(server, "other", 60, 10, 5)
    spans = [root, client, server, leaf_client, leaf, ok_client, ok]
    analysis = analyse_trace(spans, root.span_id)
    assert analysis is not None and analysis.error_origin == Entity("service", "leaf")


def test_a_failed_database_call_is_a_sql_origin() -> None:
    root = span("front", 0, 100, failed=True)
    query = span("front", 10, 5, root, "client", failed=True, fingerprint="f1", peer="db")
    analysis = analyse_trace([root, query], root.span_id)
    assert analysis is not None and analysis.error_origin == Entity("sql", "front", "f1")


def test_unknown_entry_span_gives_nothing() -> None:
    assert analyse_trace([span("front", 0, 10)], "missing") is None


def _chain(trace: str, db_ms: float, own_ms: float = 5, instance: str = "") -> TraceAnalysis:
    """front -> a -> b -> c -> db: every service waits for the next; c runs the statement."""
    root = span("front", 0, 4 * own_ms + db_ms + 8, trace=trace)
    spans = [root]
    parent = root
    at = own_ms / 2
    for name in ("a", "b", "c"):
        remaining = root.duration_ns / MS - 2 * at
        client, server = call(parent, name, at, remaining, remaining - 2, instance=instance)
        spans += [client, server]
        parent = server
        at += own_ms / 2 + 1
    query = span("c", at, db_ms, parent, "client", trace=trace, fingerprint="slow", peer="db")
    spans.append(query)
    result = analyse_trace(spans, root.span_id)
    assert result is not None
    return result


def test_a_slow_statement_three_hops_down_ranks_above_the_services_waiting_for_it() -> None:
    before = [_chain(f"b{i}", 10) for i in range(20)]
    after = [_chain(f"a{i}", 200) for i in range(20)]
    ranking = rank(after, before, WindowStats(100, 0), WindowStats(100, 0))
    first = ranking.candidates[0]
    assert first.entity == Entity("sql", "c", "slow")
    assert first.node == "peer:db"
    assert first.latency_share == pytest.approx(1.0, abs=0.05)
    assert first.delta_ms == pytest.approx(190, abs=1)
    waiting = {Entity("own_code", s) for s in ("front", "a", "b")}
    assert not waiting & {c.entity for c in ranking.candidates}
    assert first.exemplars and first.exemplars[0].startswith("a")
    assert first.baseline_exemplars and first.baseline_exemplars[0].startswith("b")


def _instance_trace(trace: str, slow_instance: str | None, number: int) -> TraceAnalysis:
    instance = f"x-{number % 3}"
    extra = 100 if instance == slow_instance else 0
    root = span("front", 0, 30 + extra, trace=trace)
    client, server = call(root, "x", 5, 20 + extra, 18 + extra, instance=instance)
    result = analyse_trace([root, client, server], root.span_id)
    assert result is not None
    return result


@pytest.mark.parametrize(
    ("slow", "expected"),
    [("x-1", Entity("instance", "x", "x-1")), (None, Entity("own_code", "x"))],
    ids=["one-slow-instance", "all-instances-slow"],
)
def test_an_increase_on_one_instance_is_the_instance(slow: str | None, expected: Entity) -> None:
    before = [_instance_trace(f"b{i}", None, i) for i in range(30)]
    if slow is None:  # every instance 100 ms slower
        after = [_instance_trace(f"a{i}", f"x-{i % 3}", i) for i in range(30)]
    else:
        after = [_instance_trace(f"a{i}", slow, i) for i in range(30)]
    ranking = rank(after, before, WindowStats(30, 0), WindowStats(30, 0))
    assert ranking.candidates[0].entity == expected


def test_errors_rank_where_they_start() -> None:
    def trace(name: str, failed: bool) -> TraceAnalysis:
        root = span("front", 0, 50, trace=name, failed=failed)
        client, server = call(root, "leaf", 5, 30, 20, failed=failed)
        result = analyse_trace([root, client, server], root.span_id)
        assert result is not None
        return result

    before = [trace(f"b{i}", False) for i in range(20)]
    after = [trace(f"a{i}", i % 2 == 0) for i in range(20)]
    ranking = rank(after, before, WindowStats(100, 50), WindowStats(100, 0))
    first = ranking.candidates[0]
    assert first.entity == Entity("service", "leaf")
    assert first.error_rate == pytest.approx(0.5)
    assert first.error_share == pytest.approx(1.0)
    assert ranking.error_severity > ranking.latency_severity


def test_no_change_gives_no_candidates() -> None:
    same = [_chain(f"t{i}", 10) for i in range(5)]
    assert rank(same, same, WindowStats(5, 0), WindowStats(5, 0)).candidates == []
