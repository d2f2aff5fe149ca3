#!/usr/bin/env python3
"""Acknowledged ingest rate through the ecosystem APIs (docs/ingest.md).

Two kinds of sender:
- "bytes": the request bodies each protocol's shippers send, built up front from a log file
  (Elasticsearch bulk NDJSON; OTLP protobuf grouped by service and host; Loki snappy protobuf
  grouped by service and level, the JSON line as the Loki line), posted over --connections
  keep-alive HTTP connections; only successful answers count.
- "client": the real Python clients the tests use (elasticsearch-py parallel_bulk, the
  OpenTelemetry SDK behind logging, python-logging-loki), on --client-lines lines.

Needs the test virtualenv (scripts/python-requirements.txt) plus cramjam for snappy.
Usage: bench_compat.py FILE --url http://127.0.0.1:PORT [--lines 200000] [--batch 1000]
       [--connections 4] [--client-lines 20000] [--only es,otlp,loki]
"""
import argparse, http.client, json, queue, sys, threading, time, urllib.parse

import cramjam
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as otlp_logs
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2

SEVERITY = {"TRACE": 1, "DEBUG": 5, "INFO": 9, "WARN": 13, "ERROR": 17, "FATAL": 21}


def rfc3339_nanos(text):
    from datetime import datetime
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1e9)


def es_bodies(lines, batch):
    out = []
    action = b'{"index":{"_index":"bench"}}\n'
    for i in range(0, len(lines), batch):
        chunk = lines[i:i + batch]
        out.append((len(chunk), b"".join(action + l + b"\n" for l in chunk)))
    return out


def any_value(v):
    if isinstance(v, bool):
        return common_pb2.AnyValue(bool_value=v)
    if isinstance(v, int):
        return common_pb2.AnyValue(int_value=v)
    if isinstance(v, float):
        return common_pb2.AnyValue(double_value=v)
    return common_pb2.AnyValue(string_value=str(v))


def otlp_bodies(records, batch):
    out = []
    for i in range(0, len(records), batch):
        chunk = records[i:i + batch]
        groups = {}
        for r in chunk:
            groups.setdefault((r.get("service", ""), r.get("host", "")), []).append(r)
        req = otlp_logs.ExportLogsServiceRequest()
        for (service, host), group in groups.items():
            rl = req.resource_logs.add()
            for k, v in (("service.name", service), ("host.name", host)):
                rl.resource.attributes.add(key=k, value=any_value(v))
            sl = rl.scope_logs.add()
            for r in group:
                lr = sl.log_records.add()
                lr.time_unix_nano = rfc3339_nanos(r["timestamp"])
                lr.severity_number = SEVERITY.get(r.get("level", ""), 0)
                lr.severity_text = r.get("level", "")
                lr.body.string_value = r.get("message", "")
                if r.get("trace_id"):
                    lr.trace_id = bytes.fromhex(r["trace_id"])
                if r.get("span_id"):
                    lr.span_id = bytes.fromhex(r["span_id"])
                for k, v in r.items():
                    if k not in ("timestamp", "level", "message", "service", "host", "trace_id", "span_id"):
                        lr.attributes.add(key=k, value=any_value(v))
        out.append((len(chunk), req.SerializeToString()))
    return out


def loki_bodies(records, lines, batch):
    # Loki's push.proto, encoded by hand (no generated module on PyPI).
    def varint(n):
        b = bytearray()
        while True:
            x = n & 0x7F
            n >>= 7
            b.append(x | (0x80 if n else 0))
            if not n:
                return bytes(b)

    def field(tag, payload):
        return varint(tag << 3 | 2) + varint(len(payload)) + payload

    out = []
    for i in range(0, len(records), batch):
        groups = {}
        for r, line in zip(records[i:i + batch], lines[i:i + batch]):
            groups.setdefault((r.get("service", ""), r.get("level", "")), []).append((r, line))
        streams = b""
        for (service, level), group in groups.items():
            labels = f'{{service="{service}", level="{level}"}}'.encode()
            entries = b""
            for r, line in group:
                ns = rfc3339_nanos(r["timestamp"])
                ts = varint(1 << 3) + varint(ns // 10**9) + varint(2 << 3) + varint(ns % 10**9)
                entries += field(2, field(1, ts) + field(2, line))
            streams += field(1, field(1, labels) + entries)
        out.append((len(lines[i:i + batch]), bytes(cramjam.snappy.compress_raw(streams))))
    return out


def post_all(url, path, headers, bodies, connections, ok_status):
    u = urllib.parse.urlparse(url)
    work = queue.Queue()
    for b in bodies:
        work.put(b)
    done = [0]
    errors = []
    lock = threading.Lock()

    def worker():
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
        while True:
            try:
                n, body = work.get_nowait()
            except queue.Empty:
                return
            while True:
                conn.request("POST", path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                if resp.status in (429, 503):
                    time.sleep(0.05)
                    continue
                break
            with lock:
                if resp.status == ok_status and b'"errors":true' not in data[:200]:
                    done[0] += n
                else:
                    errors.append((resp.status, data[:200]))

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return done[0], elapsed, errors


def report(name, count, elapsed, nbytes=None, errors=()):
    mb = f", {nbytes / elapsed / 1e6:.1f} MB/s of request bodies" if nbytes else ""
    print(f"{name:<44} {count:>9,} logs in {elapsed:6.2f} s = {count / elapsed:>9,.0f} logs/s{mb}"
          + (f"  ERRORS: {errors[:3]}" if errors else ""), flush=True)


def run_clients(url, records, only):
    import logging
    if "es" in only:
        from elasticsearch import Elasticsearch, helpers
        es = Elasticsearch(url, headers={"X-Logcluster-Tenant": "client-es"}, request_timeout=120)
        actions = [{"_index": "bench", "_source": r} for r in records]
        start = time.perf_counter()
        ok = sum(1 for success, _ in helpers.parallel_bulk(es, actions, thread_count=4, chunk_size=1000) if success)
        report("client: elasticsearch-py parallel_bulk", ok, time.perf_counter() - start)
    if "otlp" in only:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
        from opentelemetry.sdk.resources import Resource
        provider = LoggerProvider(resource=Resource.create({"service.name": "bench"}))
        provider.add_log_record_processor(BatchLogRecordProcessor(
            OTLPLogExporter(endpoint=f"{url}/v1/logs", headers={"X-Logcluster-Tenant": "client-otlp"}),
            max_export_batch_size=512, max_queue_size=len(records) + 1))
        log = logging.getLogger("bench-otel")
        log.propagate = False
        log.setLevel(logging.DEBUG)
        log.addHandler(LoggingHandler(logger_provider=provider))
        start = time.perf_counter()
        for r in records:
            log.info(r.get("message", ""), extra={"service": r.get("service"), "host_name": r.get("host")})
        provider.force_flush(120_000)
        report("client: OpenTelemetry SDK logging bridge", len(records), time.perf_counter() - start)
        provider.shutdown()
    if "loki" in only:
        import logging_loki
        n = min(len(records), 2000)
        handler = logging_loki.LokiHandler(url=f"{url}/loki/api/v1/push", tags={"app": "bench"}, version="1")
        log = logging.getLogger("bench-loki")
        log.propagate = False
        log.addHandler(handler)
        start = time.perf_counter()
        for r in records[:n]:
            log.warning(r.get("message", ""))
        report("client: python-logging-loki (1 request/line)", n, time.perf_counter() - start)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--url", required=True)
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--client-lines", type=int, default=20_000)
    ap.add_argument("--only", default="es,otlp,loki")
    a = ap.parse_args()
    only = set(a.only.split(","))
    with open(a.file, "rb") as f:
        lines = []
        for line in f:
            lines.append(line.rstrip(b"\n"))
            if len(lines) >= a.lines:
                break
    records = [json.loads(l) for l in lines]
    raw = sum(len(l) + 1 for l in lines)
    print(f"{len(lines):,} lines, {raw / 1e6:.1f} MB as NDJSON; batches of {a.batch}, {a.connections} connections")
    if "es" in only:
        bodies = es_bodies(lines, a.batch)
        n, t, err = post_all(a.url, "/_bulk", {"Content-Type": "application/x-ndjson", "X-Logcluster-Tenant": "es"}, bodies, a.connections, 200)
        report("bytes: Elasticsearch _bulk (NDJSON)", n, t, sum(len(b) for _, b in bodies), err)
    if "otlp" in only:
        bodies = otlp_bodies(records, a.batch)
        n, t, err = post_all(a.url, "/v1/logs", {"Content-Type": "application/x-protobuf", "X-Logcluster-Tenant": "otlp"}, bodies, a.connections, 200)
        report("bytes: OTLP/HTTP logs (protobuf)", n, t, sum(len(b) for _, b in bodies), err)
    if "loki" in only:
        bodies = loki_bodies(records, lines, a.batch)
        n, t, err = post_all(a.url, "/loki/api/v1/push", {"Content-Type": "application/x-protobuf", "X-Scope-OrgID": "loki"}, bodies, a.connections, 204)
        report("bytes: Loki push (snappy protobuf)", n, t, sum(len(b) for _, b in bodies), err)
    if a.client_lines:
        run_clients(a.url, records[:a.client_lines], only)


if __name__ == "__main__":
    sys.exit(main())
