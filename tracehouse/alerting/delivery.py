"""Delivering outbox entries: the notifier contract alerting needs, the Standard Webhooks
signature, the webhook notifier (httpx), and the retry policy (pure).

Every notification is an outbox row, ``pending`` until it is ``delivered`` or ``dead``. An
attempt that fails with a retryable outcome (a network error, 408, 429, 5xx) is tried again
after an exponential backoff with jitter, or after ``Retry-After`` when the receiver says so;
another 4xx is final; an attempt that would start after the notification's deadline is not
made. The ``webhook-id`` header is the row's id, the same on every attempt and replay, so a
receiver can deduplicate.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import hashlib
import hmac
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import httpx

from tracehouse.alerting.egress import EgressPolicy, EgressRefused


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


@dataclass(frozen=True)
class WebhookRequest:
    """One attempt at delivering one notification."""

    id: str
    url: str
    body: str
    headers: Mapping[str, str] = field(default_factory=dict)
    secret: str | None = None
    timeout_s: float = 10.0


@dataclass(frozen=True)
class SendResult:
    """How an attempt went: the HTTP status (None when none came back), the receiver's
    ``Retry-After`` in seconds, and an error text for a failure."""

    status_code: int | None
    retry_after_s: float | None = None
    error: str | None = None
    # Refused before sending (the egress policy): another attempt would be refused too.
    final: bool = False

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class Notifier(Protocol):
    """What the alerting worker needs to deliver a notification: one attempt, a result."""

    def send(self, request: WebhookRequest) -> SendResult:
        """Make one attempt; never raises for what the receiver or the network did."""
        ...


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    """The Standard Webhooks ``webhook-signature`` value: ``v1,`` + base64 of HMAC-SHA256 over
    ``{id}.{timestamp}.{body}`` with the base64-decoded part of the ``whsec_`` secret."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    content = f"{msg_id}.{timestamp}.{body}".encode()
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(request: WebhookRequest, now: dt.datetime) -> dict[str, str]:
    """Headers of one attempt: content type, the receiver's own headers, and the Standard
    Webhooks ``webhook-id``/``webhook-timestamp``/``webhook-signature`` (signature only with
    a secret). The timestamp is the attempt's, the id the notification's."""
    timestamp = int(now.timestamp())
    headers = {
        "content-type": "application/json",
        **{k.lower(): v for k, v in request.headers.items()},
        "webhook-id": request.id,
        "webhook-timestamp": str(timestamp),
    }
    if request.secret:
        headers["webhook-signature"] = sign(request.secret, request.id, timestamp, request.body)
    return headers


def parse_retry_after(value: str | None, now: dt.datetime) -> float | None:
    """Seconds from a ``Retry-After`` header (delay seconds or an HTTP date)."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - now).total_seconds())


class WebhookNotifier:
    """Delivers with httpx (one connection pool), signed per Standard Webhooks, to the
    targets ``egress`` allows (default: anything but link-local and metadata addresses)."""

    def __init__(
        self,
        clock: Callable[[], dt.datetime] | None = None,
        egress: EgressPolicy | None = None,
    ) -> None:
        self._client = httpx.Client(follow_redirects=False)
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._egress = egress or EgressPolicy()

    def send(self, request: WebhookRequest) -> SendResult:
        now = self._clock()
        try:
            self._egress.check(request.url)
        except EgressRefused as exc:
            return SendResult(None, error=str(exc), final=True)
        try:
            response = self._client.post(
                request.url,
                content=request.body.encode(),
                headers=signed_headers(request, now),
                timeout=request.timeout_s,
            )
        except httpx.HTTPError as exc:
            return SendResult(None, error=f"{type(exc).__name__}: {exc}")
        error = None if response.is_success else f"HTTP {response.status_code}"
        if error and response.text:
            error += f": {response.text[:200]}"
        return SendResult(
            response.status_code,
            parse_retry_after(response.headers.get("retry-after"), now),
            error,
        )

    def close(self) -> None:
        self._client.close()


def retryable(result: SendResult) -> bool:
    """A network error, 408, 429 and 5xx are worth another attempt; any other 4xx is final,
    as is a target the egress policy refuses."""
    if result.final:
        return False
    code = result.status_code
    return code is None or code in (408, 429) or code >= 500


@dataclass(frozen=True)
class Decision:
    """What to do after an attempt."""

    status: DeliveryStatus
    next_attempt_at: dt.datetime | None
    error: str


def after_attempt(
    result: SendResult,
    attempts: int,
    now: dt.datetime,
    deadline: dt.datetime,
    backoff_initial_s: float,
    backoff_max_s: float,
    rng: random.Random | None = None,
) -> Decision:
    """The outcome of attempt number ``attempts`` (1-based): delivered, dead, or pending with
    the time of the next attempt — ``backoff_initial_s * 2**(attempts-1)`` capped at
    ``backoff_max_s``, with "equal jitter" (half fixed, half random), and never sooner than
    ``Retry-After``."""
    if result.ok:
        return Decision(DeliveryStatus.DELIVERED, None, "")
    error = result.error or f"HTTP {result.status_code}"
    if not retryable(result):
        return Decision(DeliveryStatus.DEAD, None, f"{error} (not retryable)")
    backoff = min(backoff_max_s, backoff_initial_s * 2 ** max(attempts - 1, 0))
    delay = backoff / 2 + (rng or random).uniform(0, backoff / 2)
    if result.retry_after_s is not None:
        delay = max(delay, result.retry_after_s)
    at = now + dt.timedelta(seconds=delay)
    if at > deadline:
        return Decision(
            DeliveryStatus.DEAD, None, f"{error}; deadline {deadline.isoformat()} reached"
        )
    return Decision(DeliveryStatus.PENDING, at, error)
