#!/usr/bin/env python3
"""Q1-Q4 of ../shared/bench/scripts/peers/common.py against a running LogCluster node.

Usage: bench_queries.py [--url http://127.0.0.1:3100] [--tenant bench] [--runs 5]
Timing is client-side wall clock of the HTTP request (like the peers' in-process timings plus
one loopback HTTP round trip); median of `runs` consecutive runs, no separate warm-up.
"""
import argparse, json, statistics, time, urllib.request

Q1_SERVICE, Q1_LEVEL = "payment", "ERROR"
Q1_FROM, Q1_TO = "2024-05-01T14:00:00Z", "2024-05-01T15:00:00Z"
Q2_NEEDLE = "timeout"
Q4_TRACE = "c662dcc5f36fb152848867f1486c89df"


def call(url, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method="POST" if data else "GET",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as resp:
        return json.loads(resp.read())


def bench(name, fn, runs, describe):
    ts, res = [], None
    for _ in range(runs):
        t = time.perf_counter(); res = fn(); ts.append((time.perf_counter() - t) * 1000)
    print(f"logcluster {name}: median {statistics.median(ts):.1f} ms  min {min(ts):.1f}  max {max(ts):.1f}  "
          f"runs {' '.join('%.1f' % x for x in ts)}  result: {describe(res)}", flush=True)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:3100")
    ap.add_argument("--tenant", default="bench")
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    u, t = a.url, a.tenant
    bench("Q1", lambda: call(u, "/v1/query", {"tenant_id": t, "service": Q1_SERVICE, "level": Q1_LEVEL,
                                             "from_ts": Q1_FROM, "to_ts": Q1_TO, "limit": 100}),
          a.runs, lambda r: f"{len(r['items'])} rows, stats {r['stats']}")
    bench("Q2", lambda: call(u, f"/api/v1/stats?tenant_id={t}&contains={Q2_NEEDLE}&interval=1d"),
          a.runs, lambda r: f"count {sum(r['totals'].values())}, stats {r['stats']}")
    bench("Q3", lambda: call(u, f"/api/v1/stats?tenant_id={t}&interval=1m"),
          a.runs, lambda r: f"{sum(len(b['counts']) for b in r['buckets'])} groups, stats {r['stats']}")
    bench("Q4", lambda: call(u, "/v1/query", {"tenant_id": t, "query": f"trace_id:{Q4_TRACE}", "limit": 1000}),
          a.runs, lambda r: f"{len(r['items'])} rows, stats {r['stats']}")


if __name__ == "__main__":
    main()
