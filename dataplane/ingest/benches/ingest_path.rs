//! The CPU cost per entry of each step a JSON log takes through one node on its way to disk,
//! on the shared benchmark dataset: NDJSON and Protobuf decoding, WAL records, token hashing for the block
//! filter, and block building (templates layout, the store's zstd level, blocks of about 1 MiB per
//! stream, as the store cuts them).
//!
//! `cargo bench -p logcluster-ingest --bench ingest_path [-- LINES]` (with the allocator of
//! the `logcluster` binary), on the dataset of `../shared/bench/scripts/gen_logs.py` at
//! `$LOGCLUSTER_BENCH_DATA` (default `/tmp/bench/data/logs.ndjson`). Prints the fastest and
//! the median of seven rounds per step, then fingerprints of the decoded entries and the
//! blocks; figures and the machine are in BENCHMARKS.md. One thread, no network, no fsync:
//! the end-to-end figures come from `scripts/bench_ingest.py` against a running node.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use logcluster_ingest::decode::{
    DecodeContext, Record, decode_json_views, decode_payload, decode_protobuf_views,
};
use logcluster_proto::{Format, LogEntry, ids};
use logcluster_storage::{segment, wal};
use prost::Message;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const FRAME_LINES: usize = 2000;
const BLOCK_BYTES: usize = 1024 * 1024;
const ROUNDS: usize = 7;

/// Runs `step` `ROUNDS` times; prints the fastest and the median round per entry (on a
/// shared VM the fastest round is the steadiest figure for comparing two builds).
fn measure(name: &str, entries: usize, mut step: impl FnMut() -> usize) {
    let mut times = Vec::with_capacity(ROUNDS);
    let mut check = 0;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        check = std::hint::black_box(step());
        times.push(started.elapsed());
    }
    times.sort();
    let per_entry = |t: Duration| t.as_secs_f64() * 1e9 / entries as f64;
    println!(
        "{name:<34} {:>6.0} ns/entry (median {:.0})   ({check})",
        per_entry(times[0]),
        per_entry(times[times.len() / 2])
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::var("LOGCLUSTER_BENCH_DATA")
        .unwrap_or_else(|_| "/tmp/bench/data/logs.ndjson".to_string());
    let lines: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(300_000);
    let Ok(text) = std::fs::read_to_string(&path) else {
        println!(
            "no dataset at {path}: generate it with ../shared/bench/scripts/gen_logs.py \
             (or set LOGCLUSTER_BENCH_DATA); nothing measured"
        );
        return Ok(());
    };
    let all: Vec<&str> = text.lines().take(lines).collect();
    let frames: Vec<String> = all
        .chunks(FRAME_LINES)
        .map(|chunk| chunk.join("\n") + "\n")
        .collect();
    let n = all.len();
    println!("{n} entries from {path}, frames of {FRAME_LINES} lines");
    // As a node with no schema for JSON decodes: the parsed record is taken apart, not kept.
    let ctx = DecodeContext {
        keep_original: false,
        ..DecodeContext::default()
    };

    measure("decode NDJSON", n, || {
        frames
            .iter()
            .map(|f| {
                decode_payload(Format::Json, f.as_bytes(), &ctx)
                    .map(|out| out.records.len())
                    .unwrap_or(0)
            })
            .sum()
    });

    // What the pipeline does with JSON for the store or an ingestor: views of the frame,
    // each encoded once into its protobuf body (the WAL records are made of those).
    let bodies_of = |records: &[Record<'_>]| {
        let mut bodies = Vec::new();
        for record in records {
            if let Record::View(view) = record {
                view.encode_body(&mut bodies);
            }
        }
        bodies.len()
    };
    measure("decode NDJSON as views, and their bodies", n, || {
        frames
            .iter()
            .map(|f| match decode_json_views(f.as_bytes(), &ctx) {
                Some(Ok(out)) => bodies_of(&out.records),
                _ => 0,
            })
            .sum()
    });

    // The entries as the pipeline hands them to storage: ids and receive time assigned.
    let mut entries: Vec<LogEntry> = Vec::with_capacity(n);
    for (frame_no, frame) in frames.iter().enumerate() {
        let out = decode_payload(Format::Json, frame.as_bytes(), &ctx)?;
        for (i, decoded) in out.records.into_iter().enumerate() {
            let mut entry = decoded.entry;
            entry.id = ids::entry_id(frame_no as u64 + 1, i as u32);
            entry.received_at = entry.timestamp;
            entries.push(entry);
        }
    }
    // The same records as Protobuf frames (as `examples/protobuf_frames` writes them).
    let protobuf: Vec<Vec<u8>> = entries
        .chunks(FRAME_LINES)
        .map(|chunk| {
            logcluster_proto::LogBatch {
                entries: chunk.to_vec(),
            }
            .encode_to_vec()
        })
        .collect();
    measure("decode Protobuf", n, || {
        protobuf
            .iter()
            .map(|f| {
                decode_payload(Format::Protobuf, f, &ctx)
                    .map(|out| out.records.len())
                    .unwrap_or(0)
            })
            .sum()
    });
    measure("decode Protobuf as views, and their bodies", n, || {
        protobuf
            .iter()
            .map(|f| match decode_protobuf_views(f, &ctx) {
                Some(Ok(out)) => bodies_of(&out.records),
                _ => 0,
            })
            .sum()
    });
    measure("WAL records (per 2000-line frame)", n, || {
        entries
            .chunks(FRAME_LINES)
            .map(|chunk| wal::encode_record(1, chunk).len())
            .sum()
    });
    // Every entry's tokens: block building skips a host or trace id equal to the previous
    // entry's, so this is an upper bound of what it hashes.
    measure("token hashes for the block filter", n, || {
        let mut tokens = 0;
        for entry in &entries {
            segment::for_each_indexed_token(entry, |_| tokens += 1);
        }
        tokens
    });

    // Streams cut into blocks of about BLOCK_BYTES, as the store's tail does.
    let mut streams: BTreeMap<(&str, &str), Vec<LogEntry>> = BTreeMap::new();
    for entry in &entries {
        streams
            .entry((entry.tenant.as_str(), entry.service.as_str()))
            .or_default()
            .push(entry.clone());
    }
    let mut blocks: Vec<Vec<LogEntry>> = Vec::new();
    for stream in streams.into_values() {
        let mut block = Vec::new();
        let mut bytes = 0;
        for entry in stream {
            bytes += entry.approx_size();
            block.push(entry);
            if bytes >= BLOCK_BYTES {
                blocks.push(std::mem::take(&mut block));
                bytes = 0;
            }
        }
        if !block.is_empty() {
            blocks.push(block);
        }
    }
    let level = logcluster_storage::StorageConfig::new("").zstd_level;
    measure(
        &format!("block building (templates, zstd {level})"),
        n,
        || {
            blocks
                .iter()
                .map(|b| {
                    segment::build_block(b, level)
                        .map(|(bytes, _)| bytes.len())
                        .unwrap_or(0)
                })
                .sum()
        },
    );

    // Fingerprints of what the steps produce (untimed): a change meant only to be faster
    // must leave them as they were.
    let mut wal_print = Vec::new();
    for chunk in entries.chunks(FRAME_LINES) {
        wal_print.extend_from_slice(&ids::fnv1a64(&wal::encode_record(1, chunk)).to_le_bytes());
    }
    let mut block_print = Vec::new();
    for block in &blocks {
        let (bytes, meta) = segment::build_block(block, level)?;
        block_print.extend_from_slice(&ids::fnv1a64(&bytes).to_le_bytes());
        block_print.extend_from_slice(&ids::fnv1a64(&meta.encode_to_vec()).to_le_bytes());
    }
    println!(
        "fingerprints: decoded entries {:016x}, blocks {:016x}",
        ids::fnv1a64(&wal_print),
        ids::fnv1a64(&block_print)
    );
    Ok(())
}
