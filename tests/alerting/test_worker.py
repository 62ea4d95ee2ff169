"""The alerting worker on the real engine with a controlled clock: group_wait, the firing and
the resolved notification each sent once, a restarted worker (a new one on the same
ClickHouse) sending nothing again, and repeat_interval. A loopback receiver gets the
webhooks. No server runs, so no other worker drains this outbox."""

from __future__ import annotations

import base64
import datetime as dt
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.alerting.receiver import Receiver
from tracehouse import storage
from tracehouse.alerting.worker import AlertWorker
from tracehouse.storage.schema import SchemaOptions

SECRET = "whsec_" + base64.b64encode(os.urandom(24)).decode()
T0 = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)
RESOLVES_AT = T0 + dt.timedelta(seconds=40)


@pytest.fixture
def client(engine_url: str) -> Iterator[Any]:
    c = storage.connect(engine_url)
    storage.Migrator(c, SchemaOptions()).migrate()
    yield c
    c.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(SECRET).start()
    yield r
    r.stop()


def _rules(tmp_path: Path, receiver: Receiver, name: str) -> Path:
    # The value is 100 until RESOLVES_AT (by the evaluated window's end), 0 after.
    query = (
        f"SELECT if(toUnixTimestamp({{end:DateTime64(3)}}) < {int(RESOLVES_AT.timestamp())}, "
        "100, 0) AS value"
    )
    path = tmp_path / "rules.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "receivers": [
                    {
                        "name": name,
                        "url": receiver.url,
                        "secret": SECRET,
                        "group_wait": "10s",
                        "group_interval": "30s",
                        "repeat_interval": "1h",
                    }
                ],
                "rules": [
                    {
                        "name": name,
                        "kind": "sql",
                        "query": query,
                        "interval": "5s",
                        "condition": {"op": ">", "threshold": 50},
                        "receivers": [name],
                    }
                ],
            }
        )
    )
    return path


def test_firing_then_resolved_once_each_across_a_restart(
    client: Any, receiver: Receiver, tmp_path: Path
) -> None:
    name = f"worker-{uuid.uuid4().hex[:8]}"
    rules = _rules(tmp_path, receiver, name)
    clock = {"now": T0}

    def worker() -> AlertWorker:
        return AlertWorker(client, rules, "http://th.test", clock=lambda: clock["now"])

    def at(seconds: int, w: AlertWorker) -> None:
        clock["now"] = T0 + dt.timedelta(seconds=seconds)
        w.evaluate_once(clock["now"])
        w.deliver_once(clock["now"])

    first = worker()
    at(0, first)  # firing at once (for: 0), but the group waits 10 s
    at(5, first)
    assert receiver.received == []
    at(10, first)
    (firing,) = receiver.wait_for(1, 10)
    body = firing.json()
    assert body["status"] == "firing" and firing.signature_ok
    assert body["alerts"][0]["startsAt"] == "2030-01-01T12:00:00.000Z"

    second = worker()  # a restart: everything comes back from ClickHouse
    for seconds in (15, 20, 25, 30, 35):
        at(seconds, second)
    assert len(receiver.received) == 1  # not sent again as new

    at(40, second)  # resolved; group_interval (30 s) since the last notification has passed
    resolved = receiver.wait_for(2, 10)[1].json()
    assert resolved["status"] == "resolved"
    assert resolved["alerts"][0]["endsAt"] == "2030-01-01T12:00:40.000Z"
    assert resolved["alerts"][0]["fingerprint"] == body["alerts"][0]["fingerprint"]

    third = worker()
    for seconds in (45, 50, 3600 + 60):
        at(seconds, third)
    assert len(receiver.received) == 2  # a resolution is sent once, and never repeated
    statuses = [(e.status, e.attempts) for e in third.store.deliveries() if e.receiver == name]
    assert [(str(s), a) for s, a in statuses] == [("delivered", 1), ("delivered", 1)]


def test_an_unchanged_firing_group_is_repeated_after_repeat_interval(
    client: Any, receiver: Receiver, tmp_path: Path
) -> None:
    name = f"repeat-{uuid.uuid4().hex[:8]}"
    spec = yaml.safe_load(_rules(tmp_path, receiver, name).read_text())
    spec["rules"][0]["query"] = "SELECT 100 AS value"
    spec["receivers"][0].update(group_wait="0s", repeat_interval="10m")
    path = tmp_path / "repeat.yaml"
    path.write_text(yaml.safe_dump(spec))
    clock = {"now": T0}
    w = AlertWorker(client, path, "http://th.test", clock=lambda: clock["now"])

    def at(minutes: int) -> None:
        clock["now"] = T0 + dt.timedelta(minutes=minutes)
        w.evaluate_once(clock["now"])
        w.deliver_once(clock["now"])

    for minutes in (0, 5, 9):
        at(minutes)
    assert len(receiver.wait_for(1, 10)) == 1
    at(10)
    repeated = receiver.wait_for(2, 10)
    assert repeated[0].id != repeated[1].id  # a new notification, not a retry
    assert repeated[1].json()["status"] == "firing"
