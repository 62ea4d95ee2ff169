"""Webhook egress: link-local and metadata targets refused unless allowed, allow/deny lists of
hosts and networks, and a refused attempt goes straight to the dead letters."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import pytest
from pydantic import ValidationError

from tracehouse.alerting.api import redact_url
from tracehouse.alerting.delivery import (
    DeliveryStatus,
    WebhookNotifier,
    WebhookRequest,
    after_attempt,
)
from tracehouse.alerting.egress import EgressPolicy, EgressRefused
from tracehouse.config import Settings

# Name -> addresses, as DNS would answer (the policy checks every address of a name).
DNS = {
    "hooks.example.com": ["203.0.113.7"],
    "sneaky.example.com": ["203.0.113.8", "169.254.169.254"],
    "keda.internal": ["10.1.2.3"],
}


def resolve(host: str) -> Sequence[str]:
    return DNS.get(host, [])


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 in 169.254.0.0/16"),
        ("http://[fe80::1]:8080/hook", "fe80::1 in fe80::/10"),
        ("http://metadata.google.internal/computeMetadata/v1/", "metadata.google.internal"),
        ("https://sneaky.example.com/hook", "169.254.169.254 in 169.254.0.0/16"),
    ],
    ids=["aws-metadata", "ipv6-link-local", "gcp-metadata", "name-resolving-to-metadata"],
)
def test_link_local_and_metadata_targets_are_refused_by_default(url: str, reason: str) -> None:
    with pytest.raises(EgressRefused, match="denied") as refused:
        EgressPolicy(resolver=resolve).check(url)
    assert reason in str(refused.value)
    assert "webhook_allow" in str(refused.value)  # says how to permit it


@pytest.mark.parametrize(
    "url",
    ["https://hooks.example.com/a", "http://keda.internal:8080/x", "http://127.0.0.1:9/hook"],
)
def test_other_targets_are_called_by_default(url: str) -> None:
    EgressPolicy(resolver=resolve).check(url)


def test_an_allowed_network_or_host_overrides_the_default_deny() -> None:
    EgressPolicy(allow=["169.254.169.254/32"], resolver=resolve).check("http://169.254.169.254/")
    policy = EgressPolicy(allow=["sneaky.example.com"], resolver=resolve)
    policy.check("https://sneaky.example.com/hook")


def test_a_deny_list_adds_hosts_and_networks() -> None:
    policy = EgressPolicy(deny=["10.0.0.0/8", "hooks.example.com"], resolver=resolve)
    with pytest.raises(EgressRefused, match=r"10\.1\.2\.3 in 10\.0\.0\.0/8"):
        policy.check("http://keda.internal/x")
    with pytest.raises(EgressRefused, match=r"hooks\.example\.com"):
        policy.check("https://HOOKS.example.com./a")
    policy.check("http://127.0.0.1/")


def test_an_allow_list_admits_only_what_it_names() -> None:
    policy = EgressPolicy(allow=["10.0.0.0/8"], resolver=resolve)
    policy.check("http://keda.internal/x")
    with pytest.raises(EgressRefused, match="not in webhook_allow"):
        policy.check("https://hooks.example.com/a")


@pytest.mark.parametrize("url", ["ftp://hooks.example.com/x", "file:///etc/passwd", "http:///x"])
def test_only_http_urls_with_a_host(url: str) -> None:
    with pytest.raises(EgressRefused, match="not http"):
        EgressPolicy(resolver=resolve).check(url)


def test_a_refused_attempt_is_final_and_goes_to_the_dead_letters() -> None:
    notifier = WebhookNotifier(egress=EgressPolicy(resolver=resolve))
    try:
        result = notifier.send(WebhookRequest(id="n1", url="http://169.254.169.254/", body="{}"))
    finally:
        notifier.close()
    assert (result.status_code, result.final) == (None, True)
    now = dt.datetime.now(dt.UTC)
    decision = after_attempt(result, 1, now, now + dt.timedelta(hours=1), 1.0, 60.0)
    assert decision.status == DeliveryStatus.DEAD
    assert "denied" in decision.error


@pytest.mark.parametrize(
    ("field", "entry"), [("webhook_deny", "10.0.0.0/33"), ("webhook_allow", "not a host")]
)
def test_bad_entries_stop_the_configuration_naming_the_setting(field: str, entry: str) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: [entry]})


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://ops:s3cret@hooks.example.com/a?x=1", "https://ops:***@hooks.example.com/a?x=1"),
        ("https://hooks.example.com/a", "https://hooks.example.com/a"),
    ],
)
def test_delivery_urls_are_shown_without_passwords(url: str, shown: str) -> None:
    assert redact_url(url) == shown
