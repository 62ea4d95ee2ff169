"""tracehouse: an observability and diagnosis backend on ClickHouse."""

__version__ = "0.1.0"
