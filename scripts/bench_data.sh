# Sourced by the benchmark scripts: makes $bench (a copy of ../shared/bench) and its 1M-line
# dataset (data/logs.ndjson and data/logs.syslog, seed 42) ready. Expects $root and $bench.
[ -d "$bench" ] || cp -r "$root/../shared/bench" "$bench"
[ -f "$bench/data/logs.ndjson" ] && [ -f "$bench/data/logs.syslog" ] ||
    python3 "$bench/scripts/gen_logs.py" --lines 1000000 --seed 42 --out "$bench/data"
