#!/usr/bin/env bash
# Benchmarks of a single node on the 1M-line dataset of ../shared/bench (see BENCHMARKS.md).
# Usage: scripts/bench.sh [BENCH_DIR]   (default: a copy of ../shared/bench in /tmp/bench)
# Runs one measurement at a time: JSON ingest over TLS (python framed sender, the file's bytes
# as they are), Protobuf ingest (logcluster send, generated entries), stored size after
# sealing, peak RSS, and Q1-Q4 of scripts/peers/common.py through the query API.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bench="${1:-/tmp/bench}"
[ -d "$bench" ] || cp -r "$root/../shared/bench" "$bench"
[ -f "$bench/data/logs.ndjson" ] || python3 "$bench/scripts/gen_logs.py" --lines 1000000 --seed 42 --out "$bench/data"
# NO_BUILD=1: use the existing binary (e.g. repeated runs while the tree is being edited)
[ "${NO_BUILD:-0}" = 1 ] || cargo build --release -p logcluster --manifest-path "$root/Cargo.toml" >/dev/null
bin="$root/target/release/logcluster"
work="$(mktemp -d /tmp/lcbench.XXXX)"
"$bin" up --data-dir "$work/pki" --ephemeral-ports >/dev/null 2>&1 &
up_pid=$!
for _ in $(seq 100); do [ -f "$work/pki/ready.json" ] && break; sleep 0.1; done
kill -TERM $up_pid; wait $up_pid || true
cat > "$work/node.yaml" <<YAML
name: bench-node
dataDir: $work/data
listen: {ingest: "127.0.0.1:0", udp: "", syslogTcp: "", syslogTls: "", syslogUdp: "", http: "127.0.0.1:0"}
tls: {certFile: $work/pki/tls/node.pem, keyFile: $work/pki/tls/node-key.pem}
storage: {segmentMaxAge: 20s}
statsLogInterval: 0s
YAML
"$bin" node --config "$work/node.yaml" --ready-file "$work/ready.json" >"$work/node.log" 2>&1 &
node_pid=$!
trap 'kill $node_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -f "$work/ready.json" ] && break; sleep 0.1; done
port() { python3 -c "import json,sys;print(json.load(open('$work/ready.json'))['ports'][sys.argv[1]])" "$1"; }
ingest=$(port ingest); http=$(port http)
peak_rss() { awk '/VmHWM/ {print $2/1024 " MB"}' /proc/$node_pid/status; }
echo "== JSON over TLS (1M lines of logs.ndjson, framed, 2 connections, batches of 2000)"
python3 "$root/scripts/bench_ingest.py" "$bench/data/logs.ndjson" --port "$ingest" --ca "$work/pki/tls/ca.pem" --tenant bench
echo "   node peak RSS so far: $(peak_rss)"
echo "== Protobuf over TLS (1M generated entries, logcluster send, 2 connections, batches of 2000)"
"$bin" send --format proto --count 1000000 --batch 2000 --connections 2 --burst --tls-ca "$work/pki/tls/ca.pem" \
  --tcp-port "$ingest" --tenant proto --no-schema-check --stats-interval 60 --json-summary 2>/dev/null
echo "   node peak RSS so far: $(peak_rss)"
echo "== stored bytes after sealing (tenant bench = the 1M-line dataset)"
sleep 30
raw=$(stat -c %s "$bench/data/logs.ndjson")
stored=$(du -sb "$work/data/streams/bench" | cut -f1)
python3 -c "print(f'   raw {$raw:,} B, stored {$stored:,} B (segments with indexes), ratio {$raw/$stored:.2f}x')"
echo "== Q1-Q4 (median of 5)"
python3 "$root/scripts/bench_queries.py" --url "http://127.0.0.1:$http" --tenant bench
echo "   node peak RSS: $(peak_rss)"
