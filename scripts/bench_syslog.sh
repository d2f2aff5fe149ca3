#!/usr/bin/env bash
# Syslog over TLS into one node, with the sender and file of ../shared/bench's rsyslog TLS
# benchmark (scripts/peers/syslog_send.py --tls, data/logs.syslog, 64 KiB writes), timed from
# the sender's start until every line is durable (the node's entries counter), with the
# node's CPU and peak RSS. Compare with `TLS=1 scripts/peers/rsyslog_bench.sh` in the same
# sitting (rsyslog writes a file without fsync and acknowledges nothing).
# Usage: scripts/bench_syslog.sh [BENCH_DIR] [RUNS]   (default /tmp/bench, 3 runs)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bench="${1:-/tmp/bench}"
runs="${2:-3}"
source "$root/scripts/bench_data.sh"
want=$(wc -l < "$bench/data/logs.syslog")
entries() {
    curl -s "http://127.0.0.1:$http/metrics" |
        awk '/^logcluster_ingest_entries_total/ {s += $2} END {printf "%d", s}'
}
for run in $(seq "$runs"); do
    source "$root/scripts/bench_node.sh"
    NO_BUILD=1
    start=$(date +%s.%N)
    python3 "$bench/scripts/peers/syslog_send.py" "$syslog_tls" "$bench/data/logs.syslog" --tls
    until [ "$(entries)" -ge "$want" ]; do sleep 0.05; done
    end=$(date +%s.%N)
    cpu=$(awk '{print ($14 + $15) / 100}' "/proc/$node_pid/stat")
    python3 -c "import sys; n, s = int(sys.argv[1]), float(sys.argv[2]); print(f'run $run: {n} lines durable in {s:.2f} s = {n / s:,.0f} lines/s; node CPU {sys.argv[3]} s, peak RSS $(peak_rss)')" "$want" "$(echo "$end - $start" | bc)" "$cpu"
    kill "$node_pid"; wait "$node_pid" 2>/dev/null || true
    rm -rf "$work"
done
