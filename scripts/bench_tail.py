#!/usr/bin/env python3
"""Live-tail latency of a running LogCluster node: ack of an ingest -> the entry on the tail.

Opens `GET /api/v1/tail?query=service:<service>` (server-sent events), then sends --count
single entries one at a time with `POST /api/v1/ingest` (one JSON object: unique message,
current timestamp), --gap seconds apart. For every entry, latency = (time its SSE event
arrived) - (time the ingest POST returned 200, i.e. the durable ack). Prints p50/p99/max and
how many entries never showed up on the tail within --wait seconds after the last send.

Usage: bench_tail.py [--url http://127.0.0.1:3100] [--ingest-url URL (default --url)]
       [--tenant bench] [--service tailbench] [--count 200] [--gap 0.05] [--wait 10]
"""
import argparse, datetime, http.client, json, os, statistics, sys, threading, time, urllib.parse


def split(url):
    u = urllib.parse.urlsplit(url)
    return u.hostname, u.port or 80


def pct(sorted_values, q):
    """Nearest-rank percentile of an ascending list."""
    k = max(1, -(-len(sorted_values) * q // 1))
    return sorted_values[int(k) - 1]


class Tail(threading.Thread):
    """Reads the SSE stream and records when each message arrived (perf_counter)."""

    def __init__(self, url, tenant, service):
        super().__init__(daemon=True)
        host, port = split(url)
        self.conn = http.client.HTTPConnection(host, port, timeout=None)
        q = urllib.parse.urlencode({"query": f"service:{service}"})
        self.conn.request("GET", f"/api/v1/tail?{q}",
                          headers={"X-Logcluster-Tenant": tenant, "Accept": "text/event-stream"})
        self.resp = self.conn.getresponse()
        if self.resp.status != 200:
            raise SystemExit(f"tail: HTTP {self.resp.status}: {self.resp.read()[:500]!r}")
        self.arrived = {}  # message -> perf_counter at arrival
        self.errors = []
        self.started = threading.Event()
        self.lock = threading.Lock()

    def run(self):
        event, data = None, []
        while True:
            line = self.resp.readline()  # de-chunked
            if not line:
                return
            now = time.perf_counter()
            line = line.decode().rstrip("\r\n")
            if line.startswith(":"):
                if "tail started" in line:
                    self.started.set()
                continue
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
            elif line == "":
                if data:
                    body = "\n".join(data)
                    if event == "entry":
                        message = json.loads(body).get("message")
                        with self.lock:
                            self.arrived.setdefault(message, now)
                    elif event == "error":
                        self.errors.append(body)
                event, data = None, []


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:3100")
    ap.add_argument("--ingest-url")
    ap.add_argument("--tenant", default="bench")
    ap.add_argument("--service", default="tailbench")
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--gap", type=float, default=0.05)
    ap.add_argument("--wait", type=float, default=10.0)
    a = ap.parse_args()
    tail = Tail(a.url, a.tenant, a.service)
    tail.start()
    if not tail.started.wait(10):
        raise SystemExit("tail: no 'tail started' comment within 10 s")
    time.sleep(0.5)  # the tail only follows entries received after it began
    host, port = split(a.ingest_url or a.url)
    conn = http.client.HTTPConnection(host, port, timeout=30)
    run = os.urandom(4).hex()
    acked, ack_ms = {}, []
    for i in range(a.count):
        message = f"tailbench run={run} seq={i}"
        body = json.dumps({
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "level": "INFO", "service": a.service, "message": message,
        }).encode()
        sent = time.perf_counter()
        conn.request("POST", "/api/v1/ingest", body=body,
                     headers={"Content-Type": "application/json", "X-Logcluster-Tenant": a.tenant})
        resp = conn.getresponse()
        payload = resp.read()
        done = time.perf_counter()
        if resp.status != 200:
            raise SystemExit(f"ingest #{i}: HTTP {resp.status}: {payload[:300]!r}")
        acked[message] = done
        ack_ms.append((done - sent) * 1000)
        time.sleep(a.gap)
    deadline = time.perf_counter() + a.wait
    while time.perf_counter() < deadline:
        with tail.lock:
            if all(m in tail.arrived for m in acked):
                break
        time.sleep(0.05)
    with tail.lock:
        arrived = dict(tail.arrived)
    lat = sorted((arrived[m] - t) * 1000 for m, t in acked.items() if m in arrived)
    missing = len(acked) - len(lat)
    ack_ms.sort()
    print(f"tail latency (ack -> SSE event), {len(lat)} of {len(acked)} entries seen, {missing} missing "
          f"after {a.wait:.0f} s, {len(tail.errors)} error events:")
    if lat:
        print(f"  p50 {pct(lat, 0.5):.1f} ms  p99 {pct(lat, 0.99):.1f} ms  max {lat[-1]:.1f} ms  "
              f"min {lat[0]:.1f} ms  mean {statistics.mean(lat):.1f} ms")
    print(f"  ingest POST (send -> 200) p50 {pct(ack_ms, 0.5):.1f} ms  p99 {pct(ack_ms, 0.99):.1f} ms  "
          f"max {ack_ms[-1]:.1f} ms")
    if tail.errors:
        print("  first error event:", tail.errors[0])
    sys.exit(1 if missing or tail.errors else 0)


if __name__ == "__main__":
    main()
