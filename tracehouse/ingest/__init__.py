"""Ingest: OTLP over gRPC and HTTP → decoded rows → batched, durable inserts."""

from tracehouse.ingest.grpc_server import create_server as create_grpc_server
from tracehouse.ingest.http_server import create_app as create_http_app
from tracehouse.ingest.pipeline import IngestPipeline, Overloaded, PipelineLimits, Sink, Unavailable
from tracehouse.ingest.receiver import InvalidRequest, OtlpReceiver
from tracehouse.ingest.spool import Spool

__all__ = [
    "IngestPipeline",
    "InvalidRequest",
    "OtlpReceiver",
    "Overloaded",
    "PipelineLimits",
    "Sink",
    "Spool",
    "Unavailable",
    "create_grpc_server",
    "create_http_app",
]
