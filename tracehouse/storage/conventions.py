"""SQL expressions that read rows written by any writer.

The OpenTelemetry Collector's exporter has written enums in two spellings over time
(``Server`` / ``SPAN_KIND_SERVER``, ``Error`` / ``STATUS_CODE_ERROR``); our ingest writes the
short one. Readers use these expressions instead of comparing strings themselves.
"""

from __future__ import annotations

# Lower-case span kind: 'server', 'client', 'producer', 'consumer', 'internal' or 'unspecified'.
SPAN_KIND = (
    "multiIf("
    "SpanKind IN ('Server', 'SPAN_KIND_SERVER'), 'server', "
    "SpanKind IN ('Client', 'SPAN_KIND_CLIENT'), 'client', "
    "SpanKind IN ('Producer', 'SPAN_KIND_PRODUCER'), 'producer', "
    "SpanKind IN ('Consumer', 'SPAN_KIND_CONSUMER'), 'consumer', "
    "SpanKind IN ('Internal', 'SPAN_KIND_INTERNAL'), 'internal', "
    "'unspecified')"
)

# 1 when the span's status is an error, else 0.
IS_ERROR = "StatusCode IN ('Error', 'STATUS_CODE_ERROR')"

# Lower-case status: 'error', 'ok' or 'unset'.
STATUS = (
    "multiIf(StatusCode IN ('Error', 'STATUS_CODE_ERROR'), 'error', "
    "StatusCode IN ('Ok', 'STATUS_CODE_OK'), 'ok', 'unset')"
)
