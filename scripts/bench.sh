#!/usr/bin/env bash
# Benchmarks of a single node on the 1M-line dataset of ../shared/bench (see BENCHMARKS.md).
# Usage: scripts/bench.sh [BENCH_DIR]   (default: a copy of ../shared/bench in /tmp/bench)
# Runs one measurement at a time: JSON ingest over TLS (python framed sender, the file's bytes
# as they are), Protobuf ingest (the same sender, the dataset's records converted to Protobuf
# frames beforehand; then logcluster send's generated entries), stored size after
# sealing, peak RSS, Q1-Q4 of scripts/peers/common.py through the query API, and JSON ingest
# again with each batch spread over ~400 services (streams).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bench="${1:-/tmp/bench}"
source "$root/scripts/bench_data.sh"
# NO_BUILD=1: use the existing binary (e.g. repeated runs while the tree is being edited)
source "$root/scripts/bench_node.sh"
echo "== JSON over TLS (1M lines of logs.ndjson, framed, 2 connections, batches of 2000)"
python3 "$root/scripts/bench_ingest.py" "$bench/data/logs.ndjson" --port "$ingest" --ca "$work/pki/tls/ca.pem" --tenant bench
echo "   node peak RSS so far: $(peak_rss)"
echo "== Protobuf over TLS (the 1M records of logs.ndjson as LogBatch frames of 2000, 2 connections)"
frames="$bench/data/logs.pb-frames"
if [ ! -s "$frames" ]; then
  cargo run --release -q -p logcluster-ingest --example protobuf_frames --manifest-path "$root/Cargo.toml" \
    -- "$bench/data/logs.ndjson" "$frames.tmp" 2000 && mv "$frames.tmp" "$frames"
fi
python3 "$root/scripts/bench_ingest.py" "$frames" --format protobuf --port "$ingest" --ca "$work/pki/tls/ca.pem" --tenant proto
echo "   node peak RSS so far: $(peak_rss)"
echo "== Protobuf over TLS (1M generated entries, logcluster send, 2 connections, batches of 2000)"
"$bin" send --format proto --count 1000000 --batch 2000 --connections 2 --burst --tls-ca "$work/pki/tls/ca.pem" \
  --tcp-port "$ingest" --tenant generated --no-schema-check --stats-interval 60 --json-summary 2>/dev/null
echo "   node peak RSS so far: $(peak_rss)"
echo "== stored bytes after sealing (tenant bench = the 1M-line dataset)"
sleep 30
raw=$(stat -c %s "$bench/data/logs.ndjson")
stored=$(du -sb "$work/data/streams/bench" | cut -f1)
python3 -c "print(f'   raw {$raw:,} B, stored {$stored:,} B (segments with indexes), ratio {$raw/$stored:.2f}x')"
echo "== Q1-Q4 (median of 5)"
python3 "$root/scripts/bench_queries.py" --url "http://127.0.0.1:$http" --tenant bench
echo "   node peak RSS: $(peak_rss)"
echo "== JSON over TLS, every batch over ~400 services (the dataset spread by scripts/spread_services.py)"
spread="$bench/data/logs-400-services.ndjson"
[ -s "$spread" ] || python3 "$root/scripts/spread_services.py" "$bench/data/logs.ndjson" "$spread"
python3 "$root/scripts/bench_ingest.py" "$spread" --port "$ingest" --ca "$work/pki/tls/ca.pem" --tenant spread
echo "   node peak RSS: $(peak_rss)"
