#!/usr/bin/env python3
"""Q1-Q4 of ../shared/bench/scripts/peers/common.py, plus two aggregations, against a running
LogCluster node.

A1: counts per minute by level over the dataset's time range
    (GET /api/v1/logs/histogram?interval=1m&group_by=level);
A2: p95(duration_ms) by service over the same range (GET /api/v1/metrics/query, the window
    `over 1d` ending at --to). scripts/bench_chdb_aggs.py runs the same two on chdb and, given
    the file of --save-aggs, checks the answers.

Usage: bench_queries.py [--url http://127.0.0.1:3100] [--tenant bench] [--runs 5]
       [--from 2024-04-30T23:59:00Z] [--to 2024-05-02T00:00:00Z] [--only Q1,Q2,Q3,Q4,A1,A2]
       [--save-aggs FILE]
Timing is client-side wall clock of the HTTP request (like the peers' in-process timings plus
one loopback HTTP round trip); median of `runs` consecutive runs, no separate warm-up.
"""
import argparse, datetime, json, statistics, time, urllib.error, urllib.parse, urllib.request

Q1_SERVICE, Q1_LEVEL = "payment", "ERROR"
Q1_FROM, Q1_TO = "2024-05-01T14:00:00Z", "2024-05-01T15:00:00Z"
Q2_NEEDLE = "timeout"
Q4_TRACE = "c662dcc5f36fb152848867f1486c89df"
# gen_logs.py spreads the dataset over the 24 hours from its --start, 2024-05-01T00:00:00Z; its
# timestamp jitter puts a few entries just before it (one in the 10M-line set at 23:59:59.8), so
# the range starts a minute early. The empty minute adds a zero bucket and nothing else.
DATASET_FROM, DATASET_TO = "2024-04-30T23:59:00Z", "2024-05-02T00:00:00Z"


def parse_ts(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def call(url, path, body=None, tenant=None):
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if tenant:
        headers["X-Logcluster-Tenant"] = tenant
    req = urllib.request.Request(url + path, data=data, method="POST" if data else "GET", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=600) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        # Budgets (422), timeouts and busy (429) answer with a JSON error: show it, don't hide it.
        raise RuntimeError(f"HTTP {e.code}: {e.read().decode(errors='replace')[:500]}") from None


def bench(name, fn, runs, describe):
    ts, res = [], None
    for _ in range(runs):
        t = time.perf_counter()
        try:
            res = fn()
        except (RuntimeError, OSError) as e:
            print(f"logcluster {name}: FAILED after {(time.perf_counter() - t) * 1000:.1f} ms: {e}", flush=True)
            return None
        ts.append((time.perf_counter() - t) * 1000)
    print(f"logcluster {name}: median {statistics.median(ts):.1f} ms  min {min(ts):.1f}  max {max(ts):.1f}  "
          f"runs {' '.join('%.1f' % x for x in ts)}  result: {describe(res)}", flush=True)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:3100")
    ap.add_argument("--tenant", default="bench")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--from", dest="from_ts", default=DATASET_FROM, help="A1/A2 range start (RFC 3339)")
    ap.add_argument("--to", dest="to_ts", default=DATASET_TO, help="A1/A2 range end, exclusive")
    ap.add_argument("--only", default="Q1,Q2,Q3,Q4,A1,A2", help="comma-separated subset to run")
    ap.add_argument("--save-aggs", help="write the A1/A2 answers here as JSON (for bench_chdb_aggs.py --compare)")
    a = ap.parse_args()
    u, t = a.url, a.tenant
    only = set(a.only.split(","))
    saved = {}
    if "Q1" in only: bench("Q1", lambda: call(u, "/v1/query", {"tenant_id": t, "service": Q1_SERVICE, "level": Q1_LEVEL,
                                             "from_ts": Q1_FROM, "to_ts": Q1_TO, "limit": 100}),
          a.runs, lambda r: f"{len(r['items'])} rows, stats {r['stats']}")
    if "Q2" in only: bench("Q2", lambda: call(u, f"/api/v1/stats?tenant_id={t}&contains={Q2_NEEDLE}&interval=1d"),
          a.runs, lambda r: f"count {sum(r['totals'].values())}, stats {r['stats']}")
    if "Q3" in only: bench("Q3", lambda: call(u, f"/api/v1/stats?tenant_id={t}&interval=1m"),
          a.runs, lambda r: f"{sum(len(b['counts']) for b in r['buckets'])} groups, stats {r['stats']}")
    if "Q4" in only: bench("Q4", lambda: call(u, "/v1/query", {"tenant_id": t, "query": f"trace_id:{Q4_TRACE}", "limit": 1000}),
          a.runs, lambda r: f"{len(r['items'])} rows, stats {r['stats']}")
    window_s = (parse_ts(a.to_ts) - parse_ts(a.from_ts)).total_seconds()
    if "A1" in only:
        q = urllib.parse.urlencode({"from": a.from_ts, "to": a.to_ts, "interval": "1m", "group_by": "level"})
        r = bench("A1", lambda: call(u, f"/api/v1/logs/histogram?{q}", tenant=t), a.runs,
                  lambda r: f"{len(r['buckets'])} buckets, "
                            f"{sum(1 for b in r['buckets'] for c in b['counts'].values() if c)} non-zero (minute, level) groups, "
                            f"total {sum(r['totals'].values())}, stats {r['stats']}")
        if r is not None:
            saved["A1"] = {b["start"]: {lv: c for lv, c in b["counts"].items() if c} for b in r["buckets"]}
            saved["A1"] = {m: c for m, c in saved["A1"].items() if c}
    if "A2" in only:
        # `over` takes whole units; the window [to - over, to) must equal [from, to).
        over = f"{int(window_s)}s" if window_s % 86400 else f"{int(window_s // 86400)}d"
        q = urllib.parse.urlencode({"expr": f"p95(duration_ms) by (service) over {over}", "time": a.to_ts})
        r = bench("A2", lambda: call(u, f"/api/v1/metrics/query?{q}", tenant=t), a.runs,
                  lambda r: f"{len(r['result'])} services, window {r['window_seconds']:.0f} s, stats {r['stats']}")
        if r is not None:
            saved["A2"] = {x["labels"]["service"]: x["value"] for x in r["result"]}
    if a.save_aggs:
        with open(a.save_aggs, "w") as f:
            json.dump(saved, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
