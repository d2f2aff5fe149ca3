//! Converts an NDJSON file into Protobuf frame payloads for `scripts/bench_ingest.py --format
//! protobuf`, so that the Protobuf benchmark sends the dataset itself (mapped as the node maps
//! JSON) and the sender does no encoding while it is timed.
//!
//! Usage: `cargo run --release -p logcluster-ingest --example protobuf_frames -- IN.ndjson
//! OUT [LINES_PER_FRAME]`. OUT holds, per frame, a 4-byte big-endian length and a `LogBatch`.

use std::io::{BufRead, Write};

use logcluster_ingest::decode::{DecodeContext, decode_json_value};
use logcluster_proto::LogBatch;
use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output, rest @ ..] = args.as_slice() else {
        return Err("usage: protobuf_frames IN.ndjson OUT [LINES_PER_FRAME]".into());
    };
    let per_frame: usize = rest.first().map_or(Ok(2000), |n| n.parse())?;
    let context = DecodeContext {
        keep_original: false,
        ..Default::default()
    };
    let reader = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(input)?);
    let mut out = std::io::BufWriter::new(std::fs::File::create(output)?);
    let (mut frames, mut entries) = (0usize, 0usize);
    let mut batch = LogBatch::default();
    let mut flush = |batch: &mut LogBatch, out: &mut std::io::BufWriter<std::fs::File>| {
        let payload = batch.encode_to_vec();
        batch.entries.clear();
        out.write_all(&u32::try_from(payload.len())?.to_be_bytes())?;
        out.write_all(&payload)?;
        frames += 1;
        Ok::<(), Box<dyn std::error::Error>>(())
    };
    for (number, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let value = serde_json::from_str(&line).map_err(|e| format!("line {}: {e}", number + 1))?;
        let decoded = decode_json_value(value, &context)
            .map_err(|e| format!("line {}: {}", number + 1, e.message))?;
        batch.entries.push(decoded.entry);
        entries += 1;
        if batch.entries.len() == per_frame {
            flush(&mut batch, &mut out)?;
        }
    }
    if !batch.entries.is_empty() {
        flush(&mut batch, &mut out)?;
    }
    out.flush()?;
    eprintln!("{entries} entries in {frames} frames of up to {per_frame}");
    Ok(())
}
