#!/usr/bin/env python3
"""The benchmark dataset with its services spread over many streams, as when one shipper's
batches carry the logs of hundreds of workloads: each line's service gets a suffix -0..-(K-1)
drawn with a fixed seed (the dataset's 20 services x K=20 -> 400 services, so a batch of 2000
lines touches nearly all of them). Everything else in a line is unchanged.

Usage: spread_services.py IN.ndjson OUT.ndjson [--per-service 20] [--seed 1]
"""
import argparse, json, random


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--per-service", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    services = set()
    with open(args.src) as src, open(args.dst, "w") as dst:
        for line in src:
            record = json.loads(line)
            record["service"] = f'{record["service"]}-{rng.randrange(args.per_service)}'
            services.add(record["service"])
            dst.write(json.dumps(record, separators=(",", ":")) + "\n")
    print(f"{len(services)} services in {args.dst}")


if __name__ == "__main__":
    main()
