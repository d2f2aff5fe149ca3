#!/usr/bin/env bash
# Ingest through the ecosystem APIs next to the native framed TLS protocol, on one node and the
# same lines of ../shared/bench's dataset (see BENCHMARKS.md).
# Usage: scripts/bench_compat.sh [BENCH_DIR] [LINES]   (default /tmp/bench, 200000 lines)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bench="${1:-/tmp/bench}"
lines="${2:-200000}"
source "$root/scripts/bench_data.sh"
py="$root/target/pyenv/bin/python"
[ -x "$py" ] || { python3 -m venv "$root/target/pyenv"; "$root/target/pyenv/bin/pip" install -q -r "$root/scripts/python-requirements.txt"; }
"$py" -c 'import cramjam' 2>/dev/null || "$root/target/pyenv/bin/pip" install -q cramjam
source "$root/scripts/bench_node.sh"
head -n "$lines" "$bench/data/logs.ndjson" > "$work/lines.ndjson"
echo "== native: JSON over TLS, framed ($lines lines, 2 connections, batches of 2000)"
python3 "$root/scripts/bench_ingest.py" "$work/lines.ndjson" --port "$ingest" --ca "$work/pki/tls/ca.pem" --tenant native
echo "== ecosystem APIs"
"$py" "$root/scripts/bench_compat.py" "$work/lines.ndjson" --url "http://127.0.0.1:$http"
echo "   node peak RSS: $(peak_rss)"
