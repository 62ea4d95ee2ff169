"""Storage: the ClickHouse connection, the schema and its migrations, and OTLP batch inserts."""

from tracehouse.storage import conventions
from tracehouse.storage.client import StorageConfigError, connect, require_version
from tracehouse.storage.schema import Migrator, SchemaOptions, all_statements
from tracehouse.storage.writer import ClickHouseWriter, RefusedData

__all__ = [
    "ClickHouseWriter",
    "Migrator",
    "RefusedData",
    "SchemaOptions",
    "StorageConfigError",
    "all_statements",
    "connect",
    "conventions",
    "require_version",
]
