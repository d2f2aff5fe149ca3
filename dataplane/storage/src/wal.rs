//! The per-stream write-ahead log: an append-only file of checksummed batch records.
//!
//! File: magic `LCWAL001`, then records `[u32 body_len LE][u32 crc32(body) LE][body]` with
//! body = `[u64 batch_uid LE][prost LogBatch]`. A record is acknowledged only after the file
//! is fsynced (group commit, see `commit.rs`). Replay stops at the first record that is short
//! or fails its checksum and truncates the file there: a torn tail from a crash mid-write is
//! never served and never blocks later appends.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use logcluster_proto::{EntryRef, LogBatch, LogEntry};
use prost::Message;

use crate::StorageError;

pub const WAL_MAGIC: &[u8; 8] = b"LCWAL001";
/// Records larger than this are refused on write and treated as corruption on replay.
pub const MAX_RECORD_LEN: usize = 256 * 1024 * 1024;

/// Encodes one record (header + body). The body is a `LogBatch` encoded by hand, entry by
/// entry, so that no entry's length is computed by walking it before it is encoded.
pub fn encode_record(batch_uid: u64, entries: &[LogEntry]) -> Vec<u8> {
    let len = entries.iter().map(LogEntry::approx_size).sum();
    build_record(batch_uid, len, |out| {
        for entry in entries {
            logcluster_proto::entry::encode_entry_field(1, entry, out);
        }
    })
}

/// The protobuf bytes that entries were decoded from (each entry's message body, without its
/// field key and length), as a replica receives them.
pub struct EntryBodies<'a> {
    pub source: &'a [u8],
    /// One range of `source` per entry, in the entries' order.
    pub spans: Vec<std::ops::Range<usize>>,
}

impl EntryBodies<'_> {
    /// The record of the entries at `positions`, from their received bytes instead of
    /// encoding them again: what [`encode_record`] gives for those entries when the sender
    /// encoded them as prost does (a replay decodes the same entries either way).
    pub fn record(&self, batch_uid: u64, positions: &[u32]) -> Option<Vec<u8>> {
        let bodies: Vec<&[u8]> = positions
            .iter()
            .map(|&p| {
                let span = self.spans.get(p as usize)?;
                self.source.get(span.clone())
            })
            .collect::<Option<_>>()?;
        let len = bodies.iter().map(|body| body.len() + 4).sum();
        Some(build_record(batch_uid, len, |out| {
            for body in bodies {
                logcluster_proto::wire::put_delimited(1, body, out);
            }
        }))
    }
}

/// A record whose `LogBatch` entries `entries` appends (`len`: about how many bytes): the
/// header (body length and checksum), the batch uid, then the entries.
fn build_record(batch_uid: u64, len: usize, entries: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + len);
    out.extend_from_slice(&[0u8; 8]);
    out.extend_from_slice(&batch_uid.to_le_bytes());
    entries(&mut out);
    let body_len = (out.len() - 8) as u32;
    out[0..4].copy_from_slice(&body_len.to_le_bytes());
    let crc = crc32fast::hash(&out[8..]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}

/// One replayed record.
pub struct Record {
    pub batch_uid: u64,
    /// The entries, decoded by prost, when views do not read them ([`record_views`]); `None`
    /// for the usual record, whose entries are read as views of `bytes`.
    pub entries: Option<Vec<LogEntry>>,
    /// The whole record (header and body) as it is in the file.
    pub bytes: Vec<u8>,
}

/// Result of replaying a WAL file.
pub struct Replay {
    pub records: Vec<Record>,
    /// Bytes of valid data (header included); the file is truncated to this length.
    pub valid_len: u64,
    /// Bytes that were cut off as a torn or corrupt tail.
    pub truncated_bytes: u64,
    /// Damaged records in the middle of the log, skipped (never served).
    pub corrupt_records: usize,
}

/// Creates a new WAL file with its header, fsynced, ready for appends.
pub fn create(path: &Path) -> Result<File, StorageError> {
    let file = create_unsynced(path)?;
    file.sync_data()
        .map_err(|source| StorageError::io("write wal header", path, source))?;
    Ok(file)
}

/// [`create`] without the fsync: for a WAL whose first records are synced with it (a
/// header that a crash tears is rewritten by [`replay`]).
pub fn create_unsynced(path: &Path) -> Result<File, StorageError> {
    let mut file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(path)
        .map_err(|source| StorageError::io("create wal", path, source))?;
    file.write_all(WAL_MAGIC)
        .map_err(|source| StorageError::io("write wal header", path, source))?;
    Ok(file)
}

/// Reads every valid record of a WAL file and truncates a torn or corrupt tail.
///
/// The file is synced before it is read: a write-back of its pages that failed while no
/// process saw the error (the last one died first) is reported to this new handle, and the
/// kernel keeps such lost pages cached as if written. Their records were never acknowledged,
/// but read from the cache they would answer a retry of their batch as a duplicate; so the
/// cached pages are dropped and the file is read from the device, where the hole ends it.
pub fn replay(path: &Path) -> Result<Replay, StorageError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|source| StorageError::io("open wal", path, source))?;
    if let Err(error) = replay_sync(&file) {
        tracing::warn!(wal = %path.display(), %error, "a write-back of this WAL failed before the restart: reading what the device holds");
        logcluster_common::durable::forget_cached_pages(&file, path);
    }
    let mut data = Vec::new();
    file.read_to_end(&mut data)
        .map_err(|source| StorageError::io("read wal", path, source))?;
    let total = data.len() as u64;
    let mut records = Vec::new();
    let mut pos = if data.len() >= 8 && &data[..8] == WAL_MAGIC {
        8
    } else {
        0
    };
    let mut corrupt_records = 0;
    if pos == 8 {
        while pos < data.len() {
            if let Some((record, len)) = parse_record(&data[pos..]) {
                records.push(record);
                pos += len;
                continue;
            }
            // Damage in the middle of the log (a record that fails its checksum or does not
            // read, with an intact record somewhere after it) is skipped and counted, and the
            // records after it are kept. Anything else ends the log here: a torn tail, since a
            // write cut short is never followed by a record.
            let Some(next) = next_intact_record(&data, pos) else {
                break;
            };
            corrupt_records += 1;
            pos = next;
        }
    }
    let valid_len = pos as u64;
    if valid_len < total || valid_len == 0 {
        if valid_len == 0 {
            // Not even a header survived: rewrite it so the file stays appendable.
            file.set_len(0)
                .and_then(|()| file.seek(SeekFrom::Start(0)).map(|_| ()))
                .and_then(|()| file.write_all(WAL_MAGIC))
                .map_err(|source| StorageError::io("rewrite wal header", path, source))?;
        } else {
            file.set_len(valid_len)
                .map_err(|source| StorageError::io("truncate wal", path, source))?;
        }
        file.sync_all()
            .map_err(|source| StorageError::io("sync wal", path, source))?;
    }
    Ok(Replay {
        records,
        valid_len: valid_len.max(8),
        truncated_bytes: total.saturating_sub(valid_len.max(8)),
        corrupt_records,
    })
}

/// The sync [`replay`] runs first (a test can make it fail, as a failed write-back would).
fn replay_sync(file: &File) -> std::io::Result<()> {
    #[cfg(test)]
    if tests::FAIL_REPLAY_SYNC.take() {
        return Err(std::io::Error::from_raw_os_error(5));
    }
    file.sync_data()
}

/// The entries of one whole record (as [`encode_record`] makes it), if it is intact.
pub fn record_entries(record: &[u8]) -> Option<Vec<LogEntry>> {
    let (batch_uid, body) = checked_body(record)?;
    let _ = batch_uid;
    (8 + body.len() + 8 == record.len())
        .then(|| LogBatch::decode(body).ok())
        .flatten()
        .map(|batch| batch.entries)
}

/// The batch uid of one whole, intact record and each of its entries as a view of its bytes;
/// `None` when the record is not intact, or its entries are not laid out as views read them
/// ([`record_entries`] then decides).
pub fn record_views(record: &[u8]) -> Option<(u64, Vec<EntryRef<'_>>)> {
    use logcluster_proto::wire::{RawField, walk_fields};
    let (batch_uid, body) = checked_body(record)?;
    if 16 + body.len() != record.len() {
        return None;
    }
    let mut views = Vec::new();
    let mut read = true;
    walk_fields(body, |tag, field| match (tag, field) {
        (1, RawField::Delimited(span)) if read => match EntryRef::decode(&body[span]) {
            Some(view) => views.push(view),
            None => read = false,
        },
        _ => read = false,
    })?;
    read.then_some((batch_uid, views))
}

fn parse_record(buf: &[u8]) -> Option<(Record, usize)> {
    let (batch_uid, body) = checked_body(buf)?;
    let len = 16 + body.len();
    let bytes = &buf[..len];
    // Intact, and its entries read: as views (each one as prost reads it), or by prost.
    let entries = match record_views(bytes) {
        Some(_) => None,
        None => Some(LogBatch::decode(body).ok()?.entries),
    };
    Some((
        Record {
            batch_uid,
            entries,
            bytes: bytes.to_vec(),
        },
        len,
    ))
}

/// How far past damage [`next_intact_record`] looks for an intact record byte by byte
/// (a lost page or a few takes far less).
const RESYNC_SCAN: usize = 4 << 20;

/// The offset of the first intact record after the damaged one at `at`: found by its
/// length when that field is intact (the damage is in the body), else by trying each
/// offset up to [`RESYNC_SCAN`] bytes on (a lost page takes length fields with it). An
/// intact record is one whose length, checksum and entries all hold.
fn next_intact_record(data: &[u8], at: usize) -> Option<usize> {
    if let Some(whole) = record_span(&data[at..])
        && parse_record(&data[at + whole..]).is_some()
    {
        return Some(at + whole);
    }
    let end = data.len().min(at.saturating_add(RESYNC_SCAN));
    (at + 1..end).find(|&start| {
        // Cheap checks first (a length that fits and is at most RESYNC_RECORD, a body whose
        // batch follows its uid with an entry's field key), then checksum and entries.
        let rest = &data[start..];
        record_span(rest).is_some_and(|whole| whole <= RESYNC_RECORD)
            && rest.get(16) == Some(&0x0a)
            && parse_record(rest).is_some()
    })
}

/// The largest record [`next_intact_record`]'s offset-by-offset search accepts (a frame's
/// default maximum): larger ones after damage end the log as before.
const RESYNC_RECORD: usize = 8 << 20;

/// The length of the record at the start of `buf`, header included, when its length field
/// is in range and the whole record is there (whatever its checksum).
fn record_span(buf: &[u8]) -> Option<usize> {
    let body_len = u32::from_le_bytes(buf.get(0..4)?.try_into().ok()?) as usize;
    ((8..=MAX_RECORD_LEN).contains(&body_len) && buf.len() >= 8 + body_len).then_some(8 + body_len)
}

/// The batch uid and the encoded entries (a `LogBatch`) of the record at the start of
/// `buf`, when its length and checksum hold.
fn checked_body(buf: &[u8]) -> Option<(u64, &[u8])> {
    if buf.len() < 8 {
        return None;
    }
    let body_len = u32::from_le_bytes(buf[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().ok()?);
    if !(8..=MAX_RECORD_LEN).contains(&body_len) || buf.len() < 8 + body_len {
        return None;
    }
    let body = &buf[8..8 + body_len];
    if crc32fast::hash(body) != crc {
        return None;
    }
    let batch_uid = u64::from_le_bytes(body[0..8].try_into().ok()?);
    Some((batch_uid, &body[8..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Makes the next sync before a replay on this thread fail (EIO), as a write-back
        /// that failed before a restart would.
        pub(super) static FAIL_REPLAY_SYNC: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// A failed sync before a replay only changes where the file is read from (the device,
    /// the cached pages dropped): the replay goes on and yields what the file holds.
    #[test]
    fn a_failed_sync_before_a_replay_still_replays_what_the_file_holds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal.log");
        let mut file = create(&path).expect("create");
        let entries = vec![LogEntry {
            message: "kept".into(),
            ..Default::default()
        }];
        file.write_all(&encode_record(7, &entries)).expect("write");
        file.sync_data().expect("sync");
        FAIL_REPLAY_SYNC.set(true);
        let replay = replay(&path).expect("replay");
        assert!(!FAIL_REPLAY_SYNC.get(), "the sync ran");
        assert_eq!(replay.records.len(), 1);
        assert_eq!(replay.truncated_bytes, 0);
    }
    use std::io::Write;

    fn entry(i: i64) -> LogEntry {
        LogEntry {
            id: format!("id-{i}"),
            timestamp: i,
            message: format!("message {i}"),
            service: "svc".into(),
            tenant: "t".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_record_body_is_the_batch_uid_and_a_prost_log_batch() {
        use logcluster_proto::entry::{FieldValue, field_value::Kind};
        let mut entries: Vec<LogEntry> = (0..3).map(entry).collect();
        entries[1].fields.insert(
            "status".into(),
            FieldValue {
                kind: Some(Kind::Int(503)),
            },
        );
        entries[1]
            .fields
            .insert("path".into(), FieldValue::str("/a/b".to_string()));
        entries[2].message = "x".repeat(300);
        let record = encode_record(7, &entries);
        let body = &record[8..];
        assert_eq!(
            u32::from_le_bytes(record[0..4].try_into().expect("4 bytes")) as usize,
            body.len()
        );
        assert_eq!(
            u32::from_le_bytes(record[4..8].try_into().expect("4 bytes")),
            crc32fast::hash(body)
        );
        assert_eq!(&body[..8], &7u64.to_le_bytes());
        let batch = LogBatch { entries };
        assert_eq!(&body[8..], &batch.encode_to_vec()[..]);
    }

    #[test]
    fn replay_returns_every_record_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal-1.log");
        let mut file = create(&path).expect("create");
        for b in 0..10u64 {
            let entries: Vec<_> = (0..5).map(|i| entry(b as i64 * 10 + i)).collect();
            file.write_all(&encode_record(b + 1, &entries))
                .expect("write");
        }
        let replay = replay(&path).expect("replay");
        assert_eq!(replay.records.len(), 10);
        assert_eq!(replay.truncated_bytes, 0);
        assert_eq!(replay.records[3].batch_uid, 4);
        // Read as views of the record's bytes, not decoded.
        let record = &replay.records[3];
        assert!(record.entries.is_none());
        let (uid, views) = record_views(&record.bytes).expect("views");
        assert_eq!(uid, 4);
        assert_eq!(views[2].to_entry(), entry(32));
        assert_eq!(
            record_entries(&record.bytes).expect("entries")[2],
            entry(32)
        );
    }

    #[test]
    fn a_record_views_do_not_read_is_replayed_decoded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal-1.log");
        let mut file = create(&path).expect("create");
        // An empty group after the entries (field 5): prost skips it, views refuse it.
        let odd = build_record(9, 16, |out| {
            entry_field(out, &entry(1));
            out.extend_from_slice(&[0x2b, 0x2c]);
        });
        file.write_all(&odd).expect("write");
        file.write_all(&encode_record(10, &[entry(2)]))
            .expect("write");
        let replay = replay(&path).expect("replay");
        assert_eq!(replay.truncated_bytes, 0);
        assert_eq!(replay.records.len(), 2);
        assert!(record_views(&replay.records[0].bytes).is_none());
        assert_eq!(replay.records[0].entries, Some(vec![entry(1)]));
        assert!(replay.records[1].entries.is_none());
    }

    fn entry_field(out: &mut Vec<u8>, entry: &LogEntry) {
        logcluster_proto::entry::encode_entry_field(1, entry, out);
    }

    #[test]
    fn torn_tail_is_truncated_and_appends_continue() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal-1.log");
        let mut file = create(&path).expect("create");
        file.write_all(&encode_record(1, &[entry(1)]))
            .expect("write");
        let second = encode_record(2, &[entry(2)]);
        file.write_all(&second[..second.len() - 3])
            .expect("torn write");
        drop(file);
        let first = replay(&path).expect("replay");
        assert_eq!(first.records.len(), 1);
        assert!(first.truncated_bytes > 0);
        let mut file = OpenOptions::new().append(true).open(&path).expect("reopen");
        file.write_all(&encode_record(3, &[entry(3)]))
            .expect("append");
        let again = replay(&path).expect("replay");
        assert_eq!(uids(&again), [1, 3]);
    }

    /// A WAL of `n` one-entry records of batches 1..=n, and where each record starts.
    fn wal_of(n: u64) -> (tempfile::TempDir, std::path::PathBuf, Vec<usize>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal-1.log");
        let mut file = create(&path).expect("create");
        let mut starts = Vec::new();
        for b in 1..=n {
            starts.push(file.metadata().expect("meta").len() as usize);
            file.write_all(&encode_record(b, &[entry(b as i64)]))
                .expect("write");
        }
        (dir, path, starts)
    }

    fn uids(replay: &Replay) -> Vec<u64> {
        replay.records.iter().map(|r| r.batch_uid).collect()
    }

    #[test]
    fn a_damaged_record_in_the_middle_is_skipped_and_the_rest_kept() {
        let (_dir, path, starts) = wal_of(4);
        let mut bytes = std::fs::read(&path).expect("read");
        // A byte of the second record's body (past its 8-byte header and 8-byte batch uid).
        bytes[starts[1] + 20] ^= 0x40;
        std::fs::write(&path, &bytes).expect("write");
        let replay = replay(&path).expect("replay");
        assert_eq!(uids(&replay), [1, 3, 4]);
        assert_eq!(replay.corrupt_records, 1);
        assert_eq!(
            (replay.truncated_bytes, replay.valid_len),
            (0, bytes.len() as u64)
        );
        assert_eq!(
            std::fs::metadata(&path).expect("meta").len(),
            bytes.len() as u64
        );
        // Damage to a record's length, or to the last record, still ends the log there.
        let mut torn = bytes.clone();
        torn[starts[3] + 2] ^= 0x7f;
        std::fs::write(&path, &torn).expect("write");
        let again = super::replay(&path).expect("replay");
        assert_eq!(uids(&again), [1, 3]);
        assert_eq!(again.valid_len, starts[3] as u64);
    }

    #[test]
    fn a_lost_page_over_several_records_is_skipped_and_the_rest_kept() {
        let (_dir, path, starts) = wal_of(400);
        let mut bytes = std::fs::read(&path).expect("read");
        // The page holding record 100's start zeroed: length fields and all.
        let page = starts[99] / 4096 * 4096;
        bytes[page..page + 4096].fill(0);
        std::fs::write(&path, &bytes).expect("write");
        let replay = replay(&path).expect("replay");
        let kept = uids(&replay);
        let lost: Vec<u64> = (1..=400).filter(|b| !kept.contains(b)).collect();
        assert!(lost.contains(&100), "{lost:?}");
        // Only the records the page touched are lost; all after it are kept, in order.
        let touched = |b: u64| {
            let (start, end) = (
                starts[b as usize - 1],
                starts.get(b as usize).copied().unwrap_or(bytes.len()),
            );
            start < page + 4096 && end > page
        };
        assert_eq!(lost, (1..=400).filter(|&b| touched(b)).collect::<Vec<_>>());
        assert!(kept.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(replay.corrupt_records, 1, "one damaged run");
        assert_eq!(replay.truncated_bytes, 0);
    }

    #[test]
    fn flipped_bit_stops_replay_at_the_corrupt_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal-1.log");
        let mut file = create(&path).expect("create");
        for b in 1..=3u64 {
            file.write_all(&encode_record(b, &[entry(b as i64)]))
                .expect("write");
        }
        drop(file);
        let mut bytes = std::fs::read(&path).expect("read");
        let len = bytes.len();
        bytes[len - 5] ^= 0x40;
        std::fs::write(&path, &bytes).expect("write");
        let replay = replay(&path).expect("replay");
        assert_eq!(replay.records.len(), 2);
    }
}
