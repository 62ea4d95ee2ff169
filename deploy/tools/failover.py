"""How long the worker role is without a leader when the leader stops or crashes: the
failover figures of docs/production.md ("Running the worker").

    python deploy/tools/failover.py [RUNS]

Two electors with the default timings (lease 15 s, renew 5 s, settle 2 s) on the table store
over a temporary embedded engine. Each run: wait for a leader, then either stop it cleanly
(it releases the lease) or abandon it as a crash would (no release), and measure until the
other leads. Prints every run and the range per kind. Takes about RUNS x 30 s.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
import uuid

from tracehouse.config import Settings
from tracehouse.storage import connect
from tracehouse.storage.lease import LeaderElector, TableStore


def _wait_leader(electors: list[LeaderElector], timeout_s: float = 120) -> LeaderElector:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        leaders = [e for e in electors if e.is_leader()]
        if len(leaders) == 1:
            return leaders[0]
        time.sleep(0.01)
    raise SystemExit("no leader within the timeout")


def main(runs: int) -> None:
    defaults = Settings()
    timing = {
        "lease_s": defaults.leader_lease_s,
        "renew_s": defaults.leader_renew_s,
        "settle_s": defaults.leader_settle_s,
    }
    data = tempfile.mkdtemp(prefix="tracehouse-failover-")
    url = f"chdb://{data}"
    results: dict[str, list[float]] = {"stop": [], "crash": []}
    try:
        for kind in ("stop", "crash"):
            for run in range(runs):
                name = f"failover-{uuid.uuid4().hex[:8]}"
                clients = [connect(url), connect(url)]
                electors = [LeaderElector(TableStore(c), name, **timing) for c in clients]
                for elector in electors:
                    elector.start()
                leader = _wait_leader(electors)
                time.sleep(timing["renew_s"] * 1.5)  # the follower has seen a renewal
                other = next(e for e in electors if e is not leader)
                gone = time.monotonic()
                leader.stop(release=kind == "stop")
                _wait_leader([other])
                took = time.monotonic() - gone
                results[kind].append(took)
                print(f"{kind} run {run + 1}: new leader after {took:.2f} s", flush=True)
                other.stop()
                for client in clients:
                    client.close()
    finally:
        shutil.rmtree(data, ignore_errors=True)
    for kind, values in results.items():
        print(f"{kind}: {min(values):.2f}-{max(values):.2f} s over {len(values)} runs")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
