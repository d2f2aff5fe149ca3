#!/usr/bin/env python3
"""Cluster benchmarks for BENCHMARKS.md, on the local RF3/W2/R2 cluster of `logcluster up`.

1. Acknowledged ingest through the ingestor: JSON (the dataset's NDJSON, framed over TLS by
   scripts/bench_ingest.py) and Protobuf (`logcluster send --format proto`).
2. Anti-entropy: storage-2 loses every entry (its streams are deleted while the cluster is
   down); time until it holds them again, with no read and no hint involved.
3. Scaling: 3 -> 5 (two members join; the old owners hand streams over) and 5 -> 3 (two
   members leave and drain): wall time and bytes/entries moved, from the nodes' metrics.

Usage: scripts/bench_cluster.py [--bench /tmp/bench] [--bin target/release/logcluster]
       [--skip-ingest]
Run one benchmark at a time on an otherwise idle machine (2 cores).
"""
import argparse, json, os, shutil, signal, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get(url, timeout=30):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def metric(port, name):
    total = 0.0
    for line in get(f"http://127.0.0.1:{port}/metrics").splitlines():
        if line.startswith(name) and (line[len(name):len(name) + 1] in (" ", "{")):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait(what, check, timeout=3600, every=0.5):
    start = time.time()
    while True:
        value = check()
        if value:
            return time.time() - start
        if time.time() - start > timeout:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(every)


class Up:
    def __init__(self, binary, data, extra=()):
        self.data = data
        ready = os.path.join(data, "ready.json")
        if os.path.exists(ready):
            os.remove(ready)
        self.proc = subprocess.Popen(
            [binary, "up", "--data-dir", data, "--ephemeral-ports", *extra],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(data, "up.log"), "ab"))
        wait("up ready", lambda: os.path.exists(ready), timeout=120, every=0.2)
        self.info = json.load(open(ready))

    def storage_port(self, name):
        return next(s["http"] for s in self.info["storage"] if s["name"] == name)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)


def ingest(binary, bench, up, lines):
    ports, ca = up.info["ports"], up.info["ca"]
    print("== JSON over TLS through the ingestor (RF3/W2; bench_ingest.py, 2 connections, batches of 2000)", flush=True)
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts/bench_ingest.py"),
                    os.path.join(bench, "data/logs.ndjson"), "--port", str(ports["ingest"]),
                    "--ca", ca, "--tenant", "bench"], check=True)
    print("== Protobuf over TLS through the ingestor (logcluster send, 2 connections, batches of 2000)", flush=True)
    subprocess.run([binary, "send", "--format", "proto", "--count", str(lines), "--batch", "2000",
                    "--connections", "2", "--burst", "--tls-ca", ca, "--tcp-port", str(ports["ingest"]),
                    "--tenant", "proto", "--no-schema-check", "--stats-interval", "60",
                    "--json-summary"], check=True, stderr=subprocess.DEVNULL)


def anti_entropy(binary, up, expected):
    data = up.data
    up.stop()
    streams = os.path.join(data, "storage-2", "streams")
    shutil.rmtree(streams, ignore_errors=True)
    print(f"== anti-entropy: storage-2 lost all {expected:,} entries; restart with antiEntropyInterval 5s", flush=True)
    up = Up(binary, data, ["--anti-entropy-interval", "5s"])
    port = up.storage_port("storage-2")
    took = wait("storage-2 to hold every entry again",
                lambda: metric(port, "logcluster_storage_appended_entries_total") >= expected)
    repaired = metric(port, "logcluster_cluster_anti_entropy_entries_repaired_total")
    print(f"   converged in {took:.1f} s ({expected / took:,.0f} entries/s) after the restart, "
          f"including the first 5 s interval; storage-2 pulled {repaired:,.0f} entries", flush=True)
    return up


def start_member(binary, up, name):
    base = open(os.path.join(up.data, "storage-2.yaml")).read()
    text = (base.replace("storage-2", name))
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        # Fresh ephemeral ports for the new member.
        if stripped.startswith("http:") or stripped.startswith("listen:") and "127.0.0.1" in stripped:
            indent = line[: len(line) - len(line.lstrip())]
            key = stripped.split(":", 1)[0]
            line = f"{indent}{key}: 127.0.0.1:0"
        lines.append(line)
    config = os.path.join(up.data, f"{name}.yaml")
    open(config, "w").write("\n".join(lines) + "\n")
    ready = os.path.join(up.data, f"{name}.ready.json")
    if os.path.exists(ready):
        os.remove(ready)
    proc = subprocess.Popen([binary, "node", "--config", config, "--ready-file", ready],
                            stdout=subprocess.DEVNULL, stderr=open(os.path.join(up.data, f"{name}.log"), "ab"))
    wait(f"{name} ready", lambda: os.path.exists(ready), timeout=60, every=0.2)
    return proc, json.load(open(ready))["ports"]


def members_file(up):
    return up.info["members_file"]


def write_members(up, members):
    text = "members:\n" + "".join(
        f"- id: {m['id']}\n  addr: {m['addr']}\n  ready: true\n  leaving: {str(m.get('leaving', False)).lower()}\n"
        for m in members)
    tmp = members_file(up) + ".tmp"
    open(tmp, "w").write(text)
    os.replace(tmp, members_file(up))


def total(ports, name):
    return sum(metric(p, name) for p in ports)


def scaling(binary, up):
    base = [{"id": s["name"], "addr": f"127.0.0.1:{s['cluster']}"} for s in up.info["storage"]]
    old_ports = [s["http"] for s in up.info["storage"]]
    print("== scaling 3 -> 5 (two members join; old owners hand their streams over)", flush=True)
    new = {}
    for name in ("storage-3", "storage-4"):
        new[name] = start_member(binary, up, name)
    all_ports = old_ports + [p["http"] for _, p in new.values()]
    bytes_before = total(all_ports, "logcluster_storage_appended_bytes_total")
    moved_before = total(all_ports, "logcluster_cluster_rebalance_entries_moved_total")
    joined = base + [{"id": n, "addr": f"127.0.0.1:{p['cluster']}"} for n, (_, p) in new.items()]
    write_members(up, joined)
    def handed_over():
        return all(json.loads(get(f"http://127.0.0.1:{p}/api/v1/drain"))["streams_to_hand_over"] == 0
                   for p in all_ports)
    time.sleep(1)  # the members file is polled every 500 ms
    took = wait("hand-over to the new owners", handed_over) + 1
    moved_bytes = total(all_ports, "logcluster_storage_appended_bytes_total") - bytes_before
    moved = total(all_ports, "logcluster_cluster_rebalance_entries_moved_total") - moved_before
    print(f"   3 -> 5: {took:.1f} s, {moved:,.0f} entries handed over, {moved_bytes / 1e6:,.1f} MB written on the receivers (WAL bytes)", flush=True)

    print("== scaling 5 -> 3 (two members leave and drain)", flush=True)
    bytes_before = total(all_ports, "logcluster_storage_appended_bytes_total")
    moved_before = total(all_ports, "logcluster_cluster_rebalance_entries_moved_total")
    write_members(up, [dict(m, leaving=m["id"] in new) for m in joined])
    time.sleep(1)
    took = wait("leaving members drained", lambda: all(
        json.loads(get(f"http://127.0.0.1:{p['http']}/api/v1/drain"))["drained"] for _, p in new.values())) + 1
    moved_bytes = total(all_ports, "logcluster_storage_appended_bytes_total") - bytes_before
    moved = total(all_ports, "logcluster_cluster_rebalance_entries_moved_total") - moved_before
    print(f"   5 -> 3: {took:.1f} s, {moved:,.0f} entries handed over, {moved_bytes / 1e6:,.1f} MB written on the receivers (WAL bytes)", flush=True)
    write_members(up, base)
    for proc, _ in new.values():
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bench", default="/tmp/bench")
    parser.add_argument("--bin", default=os.path.join(ROOT, "target/release/logcluster"))
    parser.add_argument("--skip-ingest", action="store_true")
    args = parser.parse_args()
    data = tempfile.mkdtemp(prefix="lcclusterbench.")
    lines = sum(1 for _ in open(os.path.join(args.bench, "data/logs.ndjson"), "rb"))
    up = Up(args.bin, data)
    ok = False
    try:
        if not args.skip_ingest:
            ingest(args.bin, args.bench, up, lines)
        else:
            subprocess.run([sys.executable, os.path.join(ROOT, "scripts/bench_ingest.py"),
                            os.path.join(args.bench, "data/logs.ndjson"), "--port", str(up.info["ports"]["ingest"]),
                            "--ca", up.info["ca"], "--tenant", "bench"], check=True, stdout=subprocess.DEVNULL)
        expected = int(metric(up.storage_port("storage-0"), "logcluster_storage_appended_entries_total"))
        up = anti_entropy(args.bin, up, expected)
        scaling(args.bin, up)
        ok = True
    finally:
        up.stop()
        if ok:
            shutil.rmtree(data, ignore_errors=True)
        else:
            print(f"failed; node logs and data kept in {data}", file=sys.stderr)


if __name__ == "__main__":
    main()
