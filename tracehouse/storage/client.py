"""The one place that turns a URL into a ClickHouse client.

``chdb:///abs/path`` opens the embedded engine (one process may own a data directory);
``http(s)://user:pass@host:8123/db`` talks to a server or cluster. The database of a server
URL is created if it does not exist yet.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import clickhouse_connect
from clickhouse_connect.driver.exceptions import OperationalError

_embedded_lock = threading.Lock()
# Inline Protobuf schemas (format_schema_source) and oneof presence, which the OTLP insert
# relies on (storage/otlp_sql.py), arrived in ClickHouse 25.x; 25.8 is the LTS that has both.
MIN_SERVER_VERSION = (25, 8)


class StorageConfigError(ValueError):
    """The ClickHouse URL cannot be used; the message says why and what to write instead."""


def connect(url: str, cluster: str | None = None) -> Any:
    """Return a clickhouse-connect client for ``url`` (see module docstring)."""
    parts = urlsplit(url)
    if parts.scheme == "chdb":
        path = Path(parts.netloc + parts.path)
        if parts.netloc or not path.is_absolute():
            raise StorageConfigError(
                f"embedded ClickHouse needs an absolute path: chdb:///abs/dir, got {url!r}"
            )
        path.mkdir(parents=True, exist_ok=True)
        with _embedded_lock:
            return clickhouse_connect.get_client(dsn=f"chdb://{path}")
    if parts.scheme not in ("http", "https"):
        raise StorageConfigError(
            f"unsupported ClickHouse URL scheme {parts.scheme!r}: use chdb:///abs/dir "
            "or http(s)://user:pass@host:8123/db"
        )
    database = parts.path.strip("/")
    if database:
        bare = urlunsplit((parts.scheme, parts.netloc, "", parts.query, ""))
        admin = clickhouse_connect.get_client(dsn=bare, autogenerate_session_id=False)
        on_cluster = f" ON CLUSTER `{cluster}`" if cluster else ""
        admin.command(f"CREATE DATABASE IF NOT EXISTS `{database}`{on_cluster}")
        admin.close()
    # No session: a ClickHouse server refuses concurrent queries within one session, and the
    # API answers requests concurrently through one client.
    return clickhouse_connect.get_client(dsn=url, autogenerate_session_id=False)


def require_version(client: Any) -> str:
    """The server's version; raises StorageConfigError when it is older than we need."""
    version = str(client.command("SELECT version()"))
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if parts < MIN_SERVER_VERSION:
        wanted = ".".join(map(str, MIN_SERVER_VERSION))
        raise StorageConfigError(
            f"ClickHouse {version} is too old: tracehouse needs {wanted} or newer "
            "(inline Protobuf schemas for OTLP inserts)"
        )
    return version


class LazyClient:
    """A client of a ClickHouse server that connects on first use, so that a process can start
    while the server is unreachable (ingest accepts into its spool meanwhile).

    Every attribute is the connected client's; while the server cannot be reached, using one
    raises the connection error (an ``OperationalError``, see ``is_unreachable``) and the next
    use tries again. ``close()`` before any connection does nothing.
    """

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def connected(self) -> bool:
        return self._client is not None

    def _get(self) -> Any:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._connect()
                client = self._client
        return client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def is_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the ClickHouse server could not be reached or failed in transit
    (worth retrying later), as opposed to a refused query or a bad configuration."""
    return isinstance(exc, OperationalError | OSError)


_ERRNO = re.compile(r"\[Errno -?\d+\][^)'\"]*")


def unreachable_reason(exc: BaseException) -> str:
    """A short form of a connection error (clickhouse-connect's message holds the whole URL
    and retry history): the OS error when there is one, e.g. ``[Errno 111] Connection
    refused``."""
    text = str(exc)
    match = _ERRNO.search(text)
    return match.group(0).strip() if match else text[:200]
