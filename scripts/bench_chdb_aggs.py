#!/usr/bin/env python3
"""The chdb side of the aggregation queries A1/A2 of scripts/bench_queries.py, and the check of
LogCluster's answers against chdb's.

A1: SELECT toStartOfMinute(timestamp) m, level, count() FROM logs.logs GROUP BY m, level ORDER BY m
A2: SELECT service, quantile(0.95)(duration_ms) FROM logs.logs WHERE duration_ms IS NOT NULL GROUP BY service
    (ClickHouse's `quantile` samples a reservoir, so it is approximate as well; the check uses
    exact references: `quantileExact(0.95)` and the nearest-rank value, the definition the
    LogCluster sketch answers within 1 % relative error.)

Reads the table that ../shared/bench/scripts/peers/chdb_bench.py `load` created (default
/tmp/bench/data/peers/chdb; --db for another path, e.g. a 10M-row load).

Usage: bench_chdb_aggs.py [--db PATH] [--runs 5] [--compare aggs.json]
  --compare: the file bench_queries.py --save-aggs wrote; A1 must match exactly (every
  (minute, level) count, no extra or missing group), A2 within 1 % of the exact p95.
"""
import argparse, datetime, json, statistics, sys, time

from chdb import session

A1_SQL = ("SELECT toStartOfMinute(timestamp) m, level, count() FROM logs.logs "
          "GROUP BY m, level ORDER BY m")
A2_SQL = ("SELECT service, quantile(0.95)(duration_ms) FROM logs.logs "
          "WHERE duration_ms IS NOT NULL GROUP BY service")
A2_EXACT_SQL = ("SELECT service, quantileExact(0.95)(duration_ms) FROM logs.logs "
                "WHERE duration_ms IS NOT NULL GROUP BY service")
# Nearest rank: the smallest value with at least ceil(0.95 n) values at or below it.
A2_RANK_SQL = ("SELECT service, arrayElement(arraySort(groupArray(duration_ms)), "
               "toUInt64(greatest(1, ceil(0.95 * count())))) FROM logs.logs "
               "WHERE duration_ms IS NOT NULL GROUP BY service")


def timed(name, fn, runs, describe):
    ts, res = [], None
    for _ in range(runs):
        t = time.perf_counter(); res = fn(); ts.append((time.perf_counter() - t) * 1000)
    print(f"chdb {name}: median {statistics.median(ts):.1f} ms  min {min(ts):.1f}  max {max(ts):.1f}  "
          f"runs {' '.join('%.1f' % x for x in ts)}  result: {describe(res)}", flush=True)
    return res


def rows(csv_bytes):
    return [line.split(",") for line in csv_bytes.decode().splitlines() if line]


def unq(text):
    return text.strip('"')


def minute_key(text):
    """'2024-05-01 00:01:00' (chdb, UTC) or '2024-05-01T00:01:00Z' / '...00.000000000Z' -> epoch s."""
    text = unq(text).replace(" ", "T").rstrip("Z")
    if "." in text:
        text = text.split(".")[0]
    return int(datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.timezone.utc).timestamp())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default="/tmp/bench/data/peers/chdb")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--compare")
    a = ap.parse_args()
    s = session.Session(a.db)
    q = lambda sql: s.query(sql, "CSV").bytes()
    total = int(q("SELECT count() FROM logs.logs"))
    print(f"chdb table at {a.db}: {total} rows", flush=True)
    a1 = timed("A1", lambda: q(A1_SQL), a.runs,
               lambda b: f"{len(rows(b))} (minute, level) groups, total {sum(int(r[2]) for r in rows(b))}")
    a2 = timed("A2", lambda: q(A2_SQL), a.runs, lambda b: f"{len(rows(b))} services")
    a2x = timed("A2 quantileExact", lambda: q(A2_EXACT_SQL), a.runs, lambda b: f"{len(rows(b))} services")
    a2r = dict((unq(r[0]), float(r[1])) for r in rows(q(A2_RANK_SQL)))
    a2 = dict((unq(r[0]), float(r[1])) for r in rows(a2))
    a2x = dict((unq(r[0]), float(r[1])) for r in rows(a2x))
    chdb_a1 = {}
    for m, level, count in rows(a1):
        chdb_a1.setdefault(minute_key(m), {})[unq(level)] = int(count)
    s.close()
    if not a.compare:
        return
    lc = json.load(open(a.compare))
    ok = True
    if "A1" not in lc:
        print("A1 check: no LogCluster answer (the query failed)"); ok = False
    else:
        lc_a1 = {minute_key(m): c for m, c in lc["A1"].items()}
        groups = lambda d: {(m, lv): c for m, cs in d.items() for lv, c in cs.items()}
        g_lc, g_ch = groups(lc_a1), groups(chdb_a1)
        diff = [(k, g_lc.get(k), g_ch.get(k)) for k in sorted(set(g_lc) | set(g_ch)) if g_lc.get(k) != g_ch.get(k)]
        print(f"A1 check: LogCluster {len(g_lc)} groups / {sum(g_lc.values())} entries, chdb {len(g_ch)} groups / "
              f"{sum(g_ch.values())} entries (table {total}); {len(diff)} differing groups"
              + (f", first: {diff[:5]}" if diff else " -> exact match"))
        ok &= not diff
    if "A2" not in lc:
        print("A2 check: no LogCluster answer (the query failed)"); ok = False
    else:
        worst = 0.0
        print(f"A2 check ({len(lc['A2'])} LogCluster services, {len(a2x)} chdb services):")
        print(f"  {'service':<16} {'logcluster':>10} {'nearest-rank':>12} {'quantileExact':>13} {'quantile':>9}  "
              f"rel.err vs rank / vs exact / vs quantile")
        for svc in sorted(set(lc["A2"]) | set(a2x)):
            v, r, x, approx = lc["A2"].get(svc), a2r.get(svc), a2x.get(svc), a2.get(svc)
            if v is None or r is None:
                print(f"  {svc:<16} missing on one side: logcluster {v} chdb {x}"); ok = False; continue
            e_r, e_x, e_q = abs(v - r) / r, abs(v - x) / x, abs(v - approx) / approx
            worst = max(worst, e_r)
            print(f"  {svc:<16} {v:>10.2f} {r:>12.0f} {x:>13.0f} {approx:>9.1f}  {e_r:.4%} / {e_x:.4%} / {e_q:.4%}")
        print(f"A2 check: worst relative error vs the exact nearest-rank p95 {worst:.4%} "
              + ("-> within 1 %" if worst <= 0.01 else "-> OVER 1 %"))
        ok &= worst <= 0.01
    print("correctness:", "OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
