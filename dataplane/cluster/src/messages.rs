//! The messages of the cluster RPC (prost). Only this module knows their encoding.

use logcluster_proto::{EntryRef, LogEntry};

/// Request kinds of the cluster RPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// [`AppendRequest`] → [`AppendReply`]: store a batch durably (or a hint for a member).
    Append = 1,
    /// JSON query request → [`EntriesReply`] (the storage node's newest-first page).
    Query = 2,
    /// JSON stats request → JSON stats (counts by level per interval).
    Stats = 3,
    /// Empty → JSON status of the node (hints pending, drain state, stored bytes).
    Status = 4,
    /// JSON [`DigestsRequest`] → JSON [`DigestsReply`]: Merkle root, and leaves if they differ.
    Digests = 5,
    /// JSON [`KeysRequest`] → JSON list of (key, digest) in the given leaf slots.
    KeyDigests = 6,
    /// JSON [`IdsRequest`] → JSON list of [`IdRef`] for the given keys.
    Ids = 7,
    /// JSON [`FetchRequest`] → [`EntriesReply`] with the entries of those ids.
    Fetch = 8,
    /// JSON aggregation spec → JSON cells per (service, bucket, group) (the query crate's
    /// `agg::Answer`).
    Aggregate = 9,
}

/// Anti-entropy, step 1: compare roots over the partitions both members own.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct DigestsRequest {
    pub requester: String,
    pub bucket_secs: u64,
    pub depth: u32,
    pub root: u64,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct DigestsReply {
    pub root: u64,
    /// The leaf level, only when the roots differ.
    pub leaves: Option<Vec<u64>>,
}

/// Anti-entropy, step 2: the key digests behind differing leaf slots.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct KeysRequest {
    pub requester: String,
    pub bucket_secs: u64,
    pub depth: u32,
    pub slots: Vec<usize>,
}

/// Anti-entropy, step 3: the ids behind differing keys.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct IdsRequest {
    pub requester: String,
    pub bucket_secs: u64,
    pub keys: Vec<crate::merkle::Key>,
}

/// An entry as anti-entropy names it.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct IdRef {
    pub tenant: String,
    pub service: String,
    pub timestamp: i64,
    pub id: String,
}

/// Anti-entropy, step 4: entries to pull.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct FetchRequest {
    pub tenant: String,
    pub service: String,
    pub from_ts: i64,
    pub to_ts: i64,
    pub ids: Vec<String>,
}

impl Kind {
    pub fn from_u8(value: u8) -> Option<Kind> {
        match value {
            1 => Some(Kind::Append),
            2 => Some(Kind::Query),
            3 => Some(Kind::Stats),
            4 => Some(Kind::Status),
            5 => Some(Kind::Digests),
            6 => Some(Kind::KeyDigests),
            7 => Some(Kind::Ids),
            8 => Some(Kind::Fetch),
            9 => Some(Kind::Aggregate),
            _ => None,
        }
    }
}

/// Encodes entries as the repeated `entries` field (tag 4) of [`AppendRequest`]: the bytes
/// of several such chunks concatenated are the field for all their entries (what
/// `replication::EncodedBatch` makes per partition).
#[cfg(test)]
pub fn encode_entries(entries: &[LogEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.iter().map(LogEntry::approx_size).sum());
    for entry in entries {
        logcluster_proto::entry::encode_entry_field(4, entry, &mut out);
    }
    out
}

/// An [`AppendRequest`] built from pre-encoded entry chunks (repeated field 4); decodes to
/// exactly what encoding the request with those entries gives.
pub fn encode_append<'a>(
    batch_uid: u64,
    hint_for: &str,
    repair: bool,
    chunks: impl Iterator<Item = &'a Vec<u8>> + Clone,
) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(16 + hint_for.len() + chunks.clone().map(Vec::len).sum::<usize>());
    if batch_uid != 0 {
        prost::encoding::uint64::encode(1, &batch_uid, &mut out);
    }
    if !hint_for.is_empty() {
        prost::encoding::string::encode(2, &hint_for.to_string(), &mut out);
    }
    if repair {
        prost::encoding::bool::encode(3, &repair, &mut out);
    }
    for chunk in chunks {
        out.extend_from_slice(chunk);
    }
    out
}

/// Where each entry's message body lies in an encoded [`AppendRequest`], in order: one range
/// per entry that decoding the request yields. `None` when the request does not parse
/// field by field (decoding it fails then too).
pub fn entry_spans(request: &[u8]) -> Option<Vec<std::ops::Range<usize>>> {
    use logcluster_proto::wire::{RawField, walk_fields};
    let mut spans = Vec::new();
    walk_fields(request, |tag, field| {
        if let (4, RawField::Delimited(span)) = (tag, field) {
            spans.push(span);
        }
    })?;
    Some(spans)
}

/// An [`AppendRequest`] that is a plain replica write (no hint, no repair), read without
/// allocating its entries.
pub struct PlainWrite<'a> {
    pub batch_uid: u64,
    /// Where each entry's body lies in the request.
    pub spans: Vec<std::ops::Range<usize>>,
    /// Each entry, a view of those bytes.
    pub entries: Vec<EntryRef<'a>>,
}

/// The request as a [`PlainWrite`], each entry read as it is met (while its bytes are in
/// cache). `None` for a hint, a repair, or bytes that do not read as entries (decoding them
/// whole says what they are).
pub fn plain_write(request: &[u8]) -> Option<PlainWrite<'_>> {
    use logcluster_proto::wire::{RawField, walk_fields};
    let (mut batch_uid, mut other) = (0, false);
    // Room for entries of about 200 bytes (a log line's), so that the lists seldom move
    // while they grow.
    let room = request.len() / 200 + 1;
    let (mut spans, mut entries) = (Vec::with_capacity(room), Vec::with_capacity(room));
    walk_fields(request, |tag, field| match (tag, field) {
        (1, RawField::Varint(uid)) => batch_uid = uid,
        (2, RawField::Delimited(hint_for)) => other |= !hint_for.is_empty(),
        (3, RawField::Varint(repair)) => other |= repair != 0,
        (4, RawField::Delimited(_)) if other => {}
        (4, RawField::Delimited(span)) => match EntryRef::decode(&request[span.clone()]) {
            Some(entry) => {
                entries.push(entry);
                spans.push(span);
            }
            None => other = true,
        },
        (1..=4, _) => other = true,
        _ => {}
    })?;
    (!other).then_some(PlainWrite {
        batch_uid,
        spans,
        entries,
    })
}

/// A batch for one replica.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AppendRequest {
    /// The ingest batch uid: replicas de-duplicate retries by it, per stream.
    #[prost(uint64, tag = "1")]
    pub batch_uid: u64,
    /// Non-empty: the receiver is a fallback and keeps the batch as a hint for this member.
    #[prost(string, tag = "2")]
    pub hint_for: String,
    /// Repair writes (read repair, anti-entropy): skip entries whose id the stream already
    /// holds, whatever batch they came in.
    #[prost(bool, tag = "3")]
    pub repair: bool,
    #[prost(message, repeated, tag = "4")]
    pub entries: Vec<LogEntry>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AppendReply {
    #[prost(uint64, tag = "1")]
    pub stored: u64,
    #[prost(uint64, tag = "2")]
    pub duplicates: u64,
}

/// Entries with metadata (JSON) — a storage node's answer to a query.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EntriesReply {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<LogEntry>,
    #[prost(string, tag = "2")]
    pub meta_json: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn only_a_plain_write_of_readable_entries_is_read_as_views() {
        let entries: Vec<LogEntry> = (0..3)
            .map(|i| LogEntry {
                id: format!("00000000000000ab-{i:08x}"),
                message: format!("entry {i}"),
                fields: [("n".to_string(), logcluster_proto::FieldValue::int(i))].into(),
                ..LogEntry::default()
            })
            .collect();
        let request = |hint_for: &str, repair: bool| AppendRequest {
            batch_uid: 0xab,
            hint_for: hint_for.into(),
            repair,
            entries: entries.clone(),
        };
        let plain = request("", false).encode_to_vec();
        let write = plain_write(&plain).expect("a plain write");
        assert_eq!(write.batch_uid, 0xab);
        assert_eq!(write.spans.len(), 3);
        for ((view, span), entry) in write.entries.iter().zip(&write.spans).zip(&entries) {
            assert_eq!(&view.to_entry(), entry);
            assert_eq!(&plain[span.clone()], entry.encode_to_vec().as_slice());
        }
        assert!(plain_write(&request("storage-2", false).encode_to_vec()).is_none());
        assert!(plain_write(&request("", true).encode_to_vec()).is_none());
        // An entry whose message is not UTF-8: left to prost, which refuses it.
        let mut bad = request("", false);
        bad.entries[1].message = "XX".into();
        let mut bytes = bad.encode_to_vec();
        let at = bytes
            .windows(2)
            .position(|w| w == b"XX")
            .expect("message bytes");
        bytes[at] = 0xff;
        assert!(plain_write(&bytes).is_none());
        assert!(AppendRequest::decode(bytes.as_slice()).is_err());
    }

    #[test]
    fn a_request_assembled_from_encoded_chunks_equals_the_encoded_request() {
        let entry = |i: u32| LogEntry {
            id: format!("00000000000000ab-{i:08x}"),
            message: format!("entry {i}"),
            service: "svc".into(),
            timestamp: i64::from(i),
            ..LogEntry::default()
        };
        let (mut a, b): (Vec<LogEntry>, Vec<LogEntry>) =
            ((0..3).map(entry).collect(), (3..5).map(entry).collect());
        // Fields and a message long enough for a two-byte length.
        a[1].fields.insert(
            "status".into(),
            logcluster_proto::FieldValue::str("503".to_string()),
        );
        a[2].message = "m".repeat(400);
        let assembled = encode_append(
            0xab,
            "storage-1",
            true,
            [encode_entries(&a), encode_entries(&b)].iter(),
        );
        let request = AppendRequest {
            batch_uid: 0xab,
            hint_for: "storage-1".into(),
            repair: true,
            entries: a.into_iter().chain(b).collect(),
        };
        assert_eq!(assembled, request.encode_to_vec());
        assert_eq!(
            AppendRequest::decode(assembled.as_slice()).expect("decodes"),
            request
        );

        // Each entry's body is found where it lies, and nowhere else.
        let spans = entry_spans(&assembled).expect("parses");
        let bodies: Vec<LogEntry> = spans
            .iter()
            .map(|span| LogEntry::decode(&assembled[span.clone()]).expect("an entry"))
            .collect();
        assert_eq!(bodies, request.entries);
        // The entries' records from those bytes are the records of the entries.
        let received = logcluster_storage::wal::EntryBodies {
            source: &assembled,
            spans,
        };
        for positions in [vec![0, 1, 2, 3], vec![3, 1], vec![]] {
            let picked: Vec<LogEntry> = positions
                .iter()
                .map(|&p| request.entries[p as usize].clone())
                .collect();
            assert_eq!(
                received.record(9, &positions),
                Some(logcluster_storage::wal::encode_record(9, &picked))
            );
        }
        assert_eq!(received.record(9, &[5]), None, "no sixth entry");
        // A request cut short does not parse.
        for cut in 1..assembled.len() {
            let spans = entry_spans(&assembled[..cut]);
            assert!(
                spans.is_none() || AppendRequest::decode(&assembled[..cut]).is_ok(),
                "cut at {cut}"
            );
        }
    }
}
