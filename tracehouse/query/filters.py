"""Filters shared by the trace and log endpoints: trace ids and ``attr=key=value`` equality."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Query

from tracehouse.query.params import invalid

# Trace ids are stored as 32 lower-case hex characters; either case is accepted.
TRACE_ID_PATTERN = "^[0-9a-fA-F]{32}$"


@dataclass(frozen=True)
class AttributeFilter:
    """Attribute equalities that must all hold, bound as ``{attr_keys:Array(String)}`` and
    ``{attr_values:Array(String)}`` (any number of filters, one query)."""

    keys: tuple[str, ...] = ()
    values: tuple[str, ...] = ()

    def parameters(self) -> dict[str, list[str]]:
        return {"attr_keys": list(self.keys), "attr_values": list(self.values)}


def attribute_filters(
    attr: Annotated[
        list[str] | None,
        Query(
            description="attribute equality `key=value`; repeat for more (all must match)",
            examples=["http.request.method=GET"],
        ),
    ] = None,
) -> AttributeFilter:
    """FastAPI dependency: the validated ``attr`` parameters of a request."""
    keys: list[str] = []
    values: list[str] = []
    for item in attr or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise invalid("attr", f"{item!r} is not key=value (example: attr=http.route=/cart)")
        keys.append(key)
        values.append(value)
    return AttributeFilter(tuple(keys), tuple(values))
