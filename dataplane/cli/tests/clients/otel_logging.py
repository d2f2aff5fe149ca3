"""Logs through Python's logging via the OpenTelemetry SDK's OTLP/HTTP exporter (gzip);
prints the trace ids it logged under as JSON.

Usage: otel_logging.py URL TENANT
"""
import json
import logging
import sys

from opentelemetry import trace
from opentelemetry._logs import set_logger_provider
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

url, tenant = sys.argv[1], sys.argv[2]
resource = Resource.create({
    "service.name": "otel-checkout",
    "host.name": "otel-host-1",
    "k8s.pod.name": "checkout-6d9f",
    "k8s.namespace.name": "shop",
})
tracer_provider = TracerProvider(resource=resource)
trace.set_tracer_provider(tracer_provider)
provider = LoggerProvider(resource=resource)
set_logger_provider(provider)
exporter = OTLPLogExporter(
    endpoint=f"{url}/v1/logs",
    headers={"X-Logcluster-Tenant": tenant},
    compression=Compression.Gzip,
)
provider.add_log_record_processor(BatchLogRecordProcessor(exporter, max_export_batch_size=64))
log = logging.getLogger("checkout")
log.setLevel(logging.DEBUG)
log.propagate = False
log.addHandler(LoggingHandler(level=logging.DEBUG, logger_provider=provider))

tracer = trace.get_tracer("checkout")
sent = []
for i in range(120):
    with tracer.start_as_current_span(f"request-{i}") as span:
        ctx = span.get_span_context()
        level = [logging.INFO, logging.WARNING, logging.ERROR, logging.DEBUG][i % 4]
        log.log(level, "request %d handled", i, extra={"order_id": i, "customer": f"c{i % 7}"})
        sent.append({
            "message": f"request {i} handled",
            "level": logging.getLevelName(level),
            "trace_id": format(ctx.trace_id, "032x"),
            "span_id": format(ctx.span_id, "016x"),
            "order_id": i,
        })
ok = provider.force_flush(30_000)
provider.shutdown()
print(json.dumps({"flushed": ok, "sent": sent}))
