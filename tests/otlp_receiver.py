"""An in-test OTLP trace receiver: the collector's TraceService over gRPC, and the
OTLP/HTTP ``POST /v1/traces`` endpoint, both on 127.0.0.1:0.

Processes under test export to it with the real OTLP exporter
(``OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint``, or ``receiver.http_endpoint`` with
``OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf``); tests then read the spans every process
sent, with their service name, and check the tree they form.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2


@dataclass(frozen=True)
class ReceivedSpan:
    """One exported span, decoded (ids as lowercase hex, "" for no parent)."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    error: bool = False
    status_message: str = ""

    def event(self, name: str) -> dict[str, Any] | None:
        """The attributes of the first event called ``name`` (None: no such event)."""
        return next((attrs for event, attrs in self.events if event == name), None)


def _value(v: common_pb2.AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def _attributes(items: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in items}


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    def __init__(self, sink: OTLPReceiver) -> None:
        self.sink = sink

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.sink.add(_decode(request))
        return trace_service_pb2.ExportTraceServiceResponse()


def _decode(request: trace_service_pb2.ExportTraceServiceRequest) -> list[ReceivedSpan]:
    received = []
    for resource_spans in request.resource_spans:
        service = str(_attributes(resource_spans.resource.attributes).get("service.name"))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                received.append(
                    ReceivedSpan(
                        service=service,
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex(),
                        attributes=_attributes(span.attributes),
                        events=[(e.name, _attributes(e.attributes)) for e in span.events],
                        error=span.status.code == trace_pb2.Status.STATUS_CODE_ERROR,
                        status_message=span.status.message,
                    )
                )
    return received


def _http_handler(sink: OTLPReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path != "/v1/traces":
                self.send_error(404)
                return
            sink.add(_decode(trace_service_pb2.ExportTraceServiceRequest.FromString(body)))
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

    return Handler


class OTLPReceiver:
    """Collects spans exported over OTLP/gRPC. Use as a context manager."""

    def __init__(self) -> None:
        self._spans: list[ReceivedSpan] = []
        self._changed = threading.Condition()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        #: What OTEL_EXPORTER_OTLP_ENDPOINT must be (plain text gRPC).
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _http_handler(self))
        self._http.daemon_threads = True
        #: The same for OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf.
        self.http_endpoint = f"http://127.0.0.1:{self._http.server_address[1]}"
        self._http_thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> OTLPReceiver:
        self._server.start()
        self._http_thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(grace=None)
        self._http.shutdown()
        self._http.server_close()
        self._http_thread.join(10)

    def add(self, spans: list[ReceivedSpan]) -> None:
        with self._changed:
            self._spans.extend(spans)
            self._changed.notify_all()

    @property
    def spans(self) -> list[ReceivedSpan]:
        with self._changed:
            return list(self._spans)

    def wait_for(
        self, condition: Callable[[list[ReceivedSpan]], bool], what: str, timeout: float = 60.0
    ) -> list[ReceivedSpan]:
        """Block until ``condition(spans)`` holds; returns the spans then received."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition(self._spans):
                left = deadline - time.monotonic()
                if left <= 0:
                    names = sorted(f"{s.service}:{s.name}" for s in self._spans)
                    raise AssertionError(f"timed out waiting for {what}; received {names}")
                self._changed.wait(left)
            return list(self._spans)
