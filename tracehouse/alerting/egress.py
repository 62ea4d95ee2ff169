"""Where webhooks may go: an allow/deny list of hosts and networks.

A rule's receiver URL is written by whoever may edit rules; without a check, tracehouse could
be made to call the cloud metadata service (``169.254.169.254``) or other link-local
addresses from inside the cluster. Every attempt is checked just before it is made, against
the host name and every address it resolves to:

- a target on the deny list — the configured ``webhook_deny`` plus, always, link-local
  networks and the well-known metadata names — is refused unless ``webhook_allow`` names it;
- with a non-empty ``webhook_allow``, only targets it names are called.

Entries are host names (``hooks.example.com``, exact, case-insensitive) or networks in CIDR
form (``10.0.0.0/8``, ``fd00::/8``; a bare address is a /32 or /128). A refused attempt is
final (the outbox row goes to the dead letters with the reason), never retried.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str], Sequence[str]]

# Link-local (where cloud metadata services answer) and the metadata services' names.
ALWAYS_DENIED = (
    "169.254.0.0/16",
    "fe80::/10",
    "fd00:ec2::254/128",
    "metadata.google.internal",
    "metadata",
)


class EgressRefused(ValueError):
    """A webhook target the policy refuses; the message says which rule refused it."""


def _resolve(host: str) -> Sequence[str]:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror:
        return []  # the attempt itself will fail with a retryable network error
    return sorted({str(info[4][0]) for info in infos})


@dataclass(frozen=True)
class _Entries:
    hosts: frozenset[str]
    networks: tuple[Network, ...]

    @staticmethod
    def of(entries: Iterable[str], setting: str) -> _Entries:
        hosts: set[str] = set()
        networks: list[Network] = []
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                if "/" in entry or ":" in entry or " " in entry:
                    raise ValueError(
                        f"{setting}: {raw!r} is neither a host name nor a network (CIDR)"
                    ) from None
                hosts.add(entry.rstrip("."))
        return _Entries(frozenset(hosts), tuple(networks))

    def match(self, host: str, addresses: Sequence[str]) -> str | None:
        """What matches: the host name, or the first address inside a listed network."""
        if host in self.hosts:
            return host
        for address in addresses:
            ip = ipaddress.ip_address(address)
            for network in self.networks:
                if ip.version == network.version and ip in network:
                    return f"{address} in {network}"
        return None


class EgressPolicy:
    """The allow/deny lists of webhook targets (see module docstring)."""

    def __init__(
        self,
        allow: Iterable[str] = (),
        deny: Iterable[str] = (),
        resolver: Resolver = _resolve,
    ) -> None:
        self._allow = _Entries.of(allow, "webhook_allow")
        self._deny = _Entries.of([*ALWAYS_DENIED, *deny], "webhook_deny")
        self._exclusive = bool(self._allow.hosts or self._allow.networks)
        self._resolver = resolver

    def check(self, url: str) -> None:
        """Raise :class:`EgressRefused` when ``url`` may not be called."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise EgressRefused(f"webhook URL {url!r} is not http(s)://host/…")
        host = parts.hostname.lower().rstrip(".")
        try:
            addresses: Sequence[str] = [str(ipaddress.ip_address(host))]
        except ValueError:
            addresses = self._resolver(host)
        allowed = self._allow.match(host, addresses)
        if allowed is not None:
            return
        if self._exclusive:
            raise EgressRefused(f"webhook target {host} is not in webhook_allow")
        denied = self._deny.match(host, addresses)
        if denied is not None:
            raise EgressRefused(
                f"webhook target {host} is denied ({denied}); add it to webhook_allow to permit"
            )
