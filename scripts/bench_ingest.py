#!/usr/bin/env python3
"""Acknowledged ingest rate over TLS with the framed protocol (docs/protocol.md).

Reads a file (NDJSON or syslog lines), cuts it into frames of --batch lines, pipelines up to
--inflight frames on each of --connections TLS connections, and counts only acknowledged
entries. Prints rate, MB/s and ack latency percentiles (send of a frame -> its ack).

Usage: bench_ingest.py FILE --port 3001 --ca CA.pem [--format json|syslog|protobuf]
       [--batch 2000] [--inflight 16] [--connections 2] [--tenant bench]

With --format protobuf, FILE holds ready frame payloads (a 4-byte big-endian length, then a
LogBatch), as `cargo run --release -p logcluster-ingest --example protobuf_frames` writes them
from an NDJSON file; --batch is then the frames' own size.
"""
import argparse, os, socket, ssl, statistics, struct, sys, threading, time

FORMATS = {"json": 1, "protobuf": 2, "avro": 3, "raw": 4, "syslog": 5, "journald": 6}


def payloads(path, batch, fmt):
    """(entries, payload) per frame."""
    with open(path, "rb") as f:
        data = f.read()
    if fmt == "protobuf":
        out, at = [], 0
        while at < len(data):
            (n,) = struct.unpack(">I", data[at:at + 4])
            payload = data[at + 4:at + 4 + n]
            at += 4 + n
            # Entries are the LogBatch's field-1 records: count their tags (0x0a) while
            # skipping each record's bytes.
            count, i = 0, 0
            while i < len(payload):
                assert payload[i] == 0x0A, "not a LogBatch"
                i += 1
                length, shift = 0, 0
                while True:
                    b = payload[i]; i += 1
                    length |= (b & 0x7F) << shift; shift += 7
                    if b < 0x80: break
                i += length
                count += 1
            out.append((count, payload))
        return out
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [(len(lines[i:i + batch]), b"\n".join(lines[i:i + batch])) for i in range(0, len(lines), batch)]


def frames(path, batch, fmt, tenant, start_id):
    t = tenant.encode()
    out = []
    for n, payload in payloads(path, batch, fmt):
        header = b"LC" + bytes([1, FORMATS[fmt]]) + struct.pack(">QI", start_id + len(out), len(payload)) + bytes([len(t)]) + t
        out.append((n, header + payload))
    return out


def run_connection(port, ctx, work, inflight, results, lock):
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    tls = ctx.wrap_socket(sock, server_hostname="localhost")
    pending = []  # (send time, entries)
    buf = b""
    acked = failed = 0
    lat = []
    i = 0

    def read_ack():
        nonlocal buf, acked, failed
        while len(buf) < 23:
            data = tls.recv(65536)
            if not data:
                raise RuntimeError("server closed the connection")
            buf += data
        elen = struct.unpack(">H", buf[21:23])[0]
        while len(buf) < 23 + elen:
            buf += tls.recv(65536)
        status = buf[3]
        accepted = struct.unpack(">I", buf[12:16])[0]
        buf = buf[23 + elen:]
        sent_at, n = pending.pop(0)
        lat.append(time.perf_counter() - sent_at)
        if status in (0, 1):
            acked += accepted
        else:
            failed += n

    while i < len(work) or pending:
        while i < len(work) and len(pending) < inflight:
            n, frame = work[i]
            tls.sendall(frame)
            pending.append((time.perf_counter(), n))
            i += 1
        read_ack()
    tls.close()
    with lock:
        results.append((acked, failed, lat))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--port", type=int, default=3001)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--format", default="json")
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--inflight", type=int, default=16)
    ap.add_argument("--connections", type=int, default=2)
    ap.add_argument("--tenant", default="bench")
    a = ap.parse_args()
    all_frames = frames(a.file, a.batch, a.format, a.tenant, int.from_bytes(os.urandom(6), "big") << 16)
    size = os.path.getsize(a.file)
    ctx = ssl.create_default_context(cafile=a.ca)
    shards = [all_frames[k::a.connections] for k in range(a.connections)]
    results, lock = [], threading.Lock()
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    threads = [threading.Thread(target=run_connection, args=(a.port, ctx, s, a.inflight, results, lock)) for s in shards]
    for t in threads: t.start()
    for t in threads: t.join()
    dt = time.perf_counter() - t0
    sender_cpu = time.process_time() - cpu0
    acked = sum(r[0] for r in results)
    failed = sum(r[1] for r in results)
    lat = sorted(x for r in results for x in r[2])
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000
    print(f"acked {acked} failed {failed} in {dt:.2f} s: {acked / dt:,.0f} logs/s, {size / dt / 1e6:.1f} MB/s; "
          f"ack latency per {a.batch}-line frame p50 {p(0.5):.1f} ms p99 {p(0.99):.1f} ms; "
          f"sender CPU while sending {sender_cpu:.2f} s")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
