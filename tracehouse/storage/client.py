"""The one place that turns a URL into a ClickHouse client.

``chdb:///abs/path`` opens the embedded engine (one process may own a data directory);
``http(s)://user:pass@host:8123/db`` talks to a server or cluster. The database of a server
URL is created if it does not exist yet.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import clickhouse_connect

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
