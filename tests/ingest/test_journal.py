"""The request-key journal: what it keeps, what it drops, and that a torn end does no harm."""

from __future__ import annotations

import struct
import time
from pathlib import Path

from tracehouse.ingest.journal import KeyJournal, request_key
from tracehouse.model import Signal


def _keys(n: int, prefix: str = "k") -> list[bytes]:
    return [request_key(Signal.TRACES, f"{prefix}{i}".encode()) for i in range(n)]


def test_keys_survive_a_reopen_in_order(tmp_path: Path) -> None:
    journal = KeyJournal(tmp_path, max_entries=100)
    assert journal.load(window_s=600) == []
    journal.append(_keys(3))
    journal.close()

    loaded = KeyJournal(tmp_path, max_entries=100).load(window_s=600)
    assert [key for _, key in loaded] == _keys(3)
    assert all(0 <= age < 60 for age, _ in loaded)


def test_keys_older_than_the_window_are_dropped(tmp_path: Path) -> None:
    old = time.time_ns() - 3_600 * 10**9
    record = struct.Struct(">q16s")
    (tmp_path / "accepted.keys").write_bytes(
        record.pack(old, _keys(1, "old")[0]) + record.pack(time.time_ns(), _keys(1, "new")[0])
    )
    loaded = KeyJournal(tmp_path, max_entries=100).load(window_s=600)
    assert [key for _, key in loaded] == _keys(1, "new")


def test_a_torn_record_is_dropped_and_later_appends_stay_aligned(tmp_path: Path) -> None:
    journal = KeyJournal(tmp_path, max_entries=100)
    journal.load(window_s=600)
    journal.append(_keys(2))
    journal.close()
    with open(tmp_path / "accepted.keys", "ab") as out:
        out.write(b"\x00" * 11)  # a crash in mid-append

    reopened = KeyJournal(tmp_path, max_entries=100)
    assert [key for _, key in reopened.load(window_s=600)] == _keys(2)
    reopened.append(_keys(1, "after"))
    reopened.close()
    loaded = KeyJournal(tmp_path, max_entries=100).load(window_s=600)
    assert [key for _, key in loaded] == _keys(2) + _keys(1, "after")


def test_rotation_bounds_the_files_and_keeps_the_newest(tmp_path: Path) -> None:
    journal = KeyJournal(tmp_path, max_entries=10)
    journal.load(window_s=600)
    for batch in range(7):
        journal.append(_keys(4, f"b{batch}-"))
    journal.close()
    sizes = [p.stat().st_size for p in tmp_path.glob("accepted.keys*")]
    assert sum(sizes) <= 2 * 10 * 24 + 4 * 24

    loaded = [key for _, key in KeyJournal(tmp_path, max_entries=10).load(window_s=600)]
    assert len(loaded) == 10
    assert set(_keys(4, "b6-")) <= set(loaded)
    assert not set(_keys(4, "b0-")) & set(loaded)
