"""``tracehouse bench diagnosis``: the accuracy table it prints (the run itself needs an engine
of its own, so the bench is run by hand; the CI sample is test_simulation.py)."""

from __future__ import annotations

from tracehouse.bench.diagnosis import Result, format_table
from tracehouse.cli import build_parser
from tracehouse.diagnosis import simulate


def test_the_table_has_a_row_per_fault_type_and_overall() -> None:
    scenarios = simulate.scenarios(6, seed=3)
    ranks = [1, 2, 1, None, 1, 1]
    pairs = enumerate(zip(scenarios, ranks, strict=True))
    results = [Result(s, r, 0.1 * (i + 1), "x", 0.05 * (i + 1)) for i, (s, r) in pairs]
    lines = format_table(results).splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert list(rows) == [*simulate.FAULT_TYPES, "all"]
    assert rows["own_code"][:3] == ["2", "100%", "100%"]  # scenarios 1 and 6
    assert rows["sql"][:3] == ["1", "0%", "100%"]  # ranked second
    assert rows["errors"][:4] == ["1", "0%", "0%", "nan"]  # not found
    assert rows["all"][:3] == ["6", "67%", "83%"]
    assert rows["all"][6:] == ["0.600", "0.175", "0.300"]  # slowest; CPU median and most


def test_the_command_is_registered() -> None:
    args = build_parser().parse_args(["bench", "diagnosis", "--scenarios", "5", "--sample", "20"])
    assert (args.scenarios, args.sample, args.traces, args.background_spans) == (5, 20, 200, 0)
