# Sourced by the benchmark scripts: starts one release `logcluster node` (every role) with
# generated TLS on ephemeral ports. Sets $bin, $work, $node_pid, $ingest, $http and peak_rss().
# Expects $root (the repository) and honours NO_BUILD=1 and BIN (another binary to run).
[ "${NO_BUILD:-0}" = 1 ] || cargo build --release -p logcluster --manifest-path "$root/Cargo.toml" >/dev/null
bin="${BIN:-$root/target/release/logcluster}"
work="$(mktemp -d /tmp/lcbench.XXXX)"
"$bin" up --data-dir "$work/pki" --ephemeral-ports >/dev/null 2>&1 &
up_pid=$!
for _ in $(seq 100); do [ -f "$work/pki/ready.json" ] && break; sleep 0.1; done
kill -TERM $up_pid; wait $up_pid || true
cat > "$work/node.yaml" <<YAML
name: bench-node
dataDir: $work/data
listen: {ingest: "127.0.0.1:0", udp: "", syslogTcp: "", syslogTls: "127.0.0.1:0", syslogUdp: "", http: "127.0.0.1:0"}
tls: {certFile: $work/pki/tls/node.pem, keyFile: $work/pki/tls/node-key.pem}
storage: {segmentMaxAge: 20s}
statsLogInterval: 0s
YAML
"$bin" node --config "$work/node.yaml" --ready-file "$work/ready.json" >"$work/node.log" 2>&1 &
node_pid=$!
trap 'kill $node_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -f "$work/ready.json" ] && break; sleep 0.1; done
port() { python3 -c "import json,sys;print(json.load(open('$work/ready.json'))['ports'][sys.argv[1]])" "$1"; }
ingest=$(port ingest); http=$(port http); syslog_tls=$(port syslog_tls)
peak_rss() { awk '/VmHWM/ {print $2/1024 " MB"}' /proc/$node_pid/status; }
