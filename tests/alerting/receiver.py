"""A real webhook receiver on loopback for the alerting tests.

It verifies every request's Standard Webhooks signature with its own implementation (hmac and
hashlib here, not tracehouse's signer), records what it got, and answers from a script of
status codes (``[503, 503]`` then 200 for everything after).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered
    signature_ok: bool

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    def json(self) -> Any:
        return json.loads(self.body)


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The Standard Webhooks check, written from the spec: HMAC-SHA256 with the base64-decoded
    secret over ``id.timestamp.body``, base64, compared with each ``v1,`` signature."""
    key = base64.b64decode(secret.split("_", 1)[1])
    msg_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    if not msg_id or not timestamp.isdigit():
        return False
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for part in headers.get("webhook-signature", "").split(" "):
        version, _, value = part.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return True
    return False


@dataclass
class Receiver:
    secret: str
    script: list[int] = field(default_factory=list)  # statuses to answer first, then 200
    retry_after: str | None = None
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    got: threading.Condition = field(init=False)
    server: ThreadingHTTPServer | None = None

    def __post_init__(self) -> None:
        self.got = threading.Condition(self.lock)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def start(self) -> Receiver:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with owner.lock:
                    status = owner.script.pop(0) if owner.script else 200
                    owner.received.append(
                        Received(
                            self.path, headers, body, status, verify(owner.secret, headers, body)
                        )
                    )
                    owner.got.notify_all()
                self.send_response(status)
                if status in (429, 503) and owner.retry_after is not None:
                    self.send_header("Retry-After", owner.retry_after)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def wait_for(self, count: int, timeout_s: float) -> list[Received]:
        """Wait until ``count`` requests arrived (fails the test after ``timeout_s``)."""
        with self.got:
            arrived = self.got.wait_for(lambda: len(self.received) >= count, timeout_s)
            assert arrived, f"{len(self.received)} of {count} webhooks within {timeout_s} s"
            return list(self.received)
