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
        admin = clickhouse_connect.get_client(dsn=bare)
        on_cluster = f" ON CLUSTER `{cluster}`" if cluster else ""
        admin.command(f"CREATE DATABASE IF NOT EXISTS `{database}`{on_cluster}")
        admin.close()
    return clickhouse_connect.get_client(dsn=url)
