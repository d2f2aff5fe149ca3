//! Hinted hand-off: batches a fallback node keeps for a member that could not take them.
//!
//! Layout: `<dir>/<member>/hints-<seq>.log`, records `[u32 len][u32 crc32][u64 written
//! unix ms][AppendRequest]`, fsynced before the write is acknowledged (a hint counts toward
//! the write quorum, so it must be as durable as a replica). Delivery takes whole files,
//! oldest first: the file being delivered is closed for appends, each record is sent with
//! its original batch uid (the owner de-duplicates), and the file is deleted only after
//! every record was confirmed. Hints older than the window are dropped and counted:
//! anti-entropy repairs what they carried.
//!
//! Must not: hold hints only in memory, or delete a file before its records are confirmed.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;

use crate::messages::AppendRequest;

/// Files are rotated past this size so delivery can start while writes go on.
const FILE_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HintError {
    #[error("hint store i/o on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("member id {0:?} cannot name a hint folder")]
    BadMember(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HintError + '_ {
    move |source| HintError::Io {
        path: path.to_path_buf(),
        source,
    }
}

struct Open {
    seq: u64,
    file: File,
    bytes: u64,
}

/// Durable hints, per target member.
pub struct HintStore {
    dir: PathBuf,
    open: Mutex<BTreeMap<String, Open>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn valid_member(member: &str) -> bool {
    !member.is_empty()
        && member.len() <= 200
        && member
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && member != "."
        && member != ".."
}

fn seq_of(name: &str) -> Option<u64> {
    name.strip_prefix("hints-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// One stored hint.
pub struct Hint {
    pub written_ms: u64,
    pub request: AppendRequest,
}

/// One hint file as read by [`HintStore::take_oldest`].
pub struct HintFile {
    pub path: PathBuf,
    pub hints: Vec<Hint>,
    /// Whole records that failed their checksum or did not decode (skipped).
    pub corrupt_records: usize,
}

impl HintStore {
    pub fn open(dir: PathBuf) -> Result<HintStore, HintError> {
        logcluster_common::durable::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(HintStore {
            dir,
            open: Mutex::new(BTreeMap::new()),
        })
    }

    fn files(&self, member: &str) -> Vec<(u64, PathBuf)> {
        let dir = self.dir.join(member);
        let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                seq_of(&name).map(|seq| (seq, e.path()))
            })
            .collect();
        files.sort();
        files
    }

    /// Members with hints on disk.
    pub fn members(&self) -> Vec<String> {
        std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|m| valid_member(m) && !self.files(m).is_empty())
            .collect()
    }

    /// Bytes of hints on disk per member.
    pub fn pending_bytes(&self) -> BTreeMap<String, u64> {
        self.members()
            .into_iter()
            .map(|m| {
                let bytes = self
                    .files(&m)
                    .iter()
                    .filter_map(|(_, p)| std::fs::metadata(p).ok())
                    .map(|md| md.len())
                    .sum();
                (m, bytes)
            })
            .collect()
    }

    /// Stores a hint durably (written and fsynced before this returns). Blocking.
    pub fn append(&self, member: &str, request: &AppendRequest) -> Result<(), HintError> {
        if !valid_member(member) {
            return Err(HintError::BadMember(member.to_string()));
        }
        let payload = request.encode_to_vec();
        let mut record = Vec::with_capacity(16 + payload.len());
        record.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        let written = now_ms();
        let mut crc = crc32fast::Hasher::new();
        crc.update(&written.to_be_bytes());
        crc.update(&payload);
        record.extend_from_slice(&crc.finalize().to_be_bytes());
        record.extend_from_slice(&written.to_be_bytes());
        record.extend_from_slice(&payload);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.get(member).is_none_or(|o| o.bytes >= FILE_BYTES) {
            let dir = self.dir.join(member);
            logcluster_common::durable::create_dir_all(&dir).map_err(io(&dir))?;
            let seq = self.files(member).last().map(|(s, _)| s + 1).unwrap_or(1);
            let path = dir.join(format!("hints-{seq:012}.log"));
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io(&path))?;
            logcluster_common::durable::sync_parent(&path).map_err(io(&dir))?;
            open.insert(
                member.to_string(),
                Open {
                    seq,
                    file,
                    bytes: 0,
                },
            );
        }
        let current = open
            .get_mut(member)
            .ok_or_else(|| HintError::BadMember(member.to_string()))?;
        let path = self.dir.join(member);
        let written = current
            .file
            .write_all(&record)
            .and_then(|()| current.file.sync_data());
        if let Err(source) = written {
            // Cut the partly written record off and start a new file next time: a later,
            // acknowledged hint must never sit behind a torn record (reading stops there).
            let _ = current.file.set_len(current.bytes);
            open.remove(member);
            return Err(HintError::Io { path, source });
        }
        current.bytes += record.len() as u64;
        Ok(())
    }

    /// The oldest closed-or-closable hint file of a member and its readable records. A torn
    /// tail (a record cut short: its write was never acknowledged) ends the list; a whole
    /// record whose checksum or body is wrong is skipped and counted, and the records after
    /// it are still read. Closes the file for appends first. Blocking.
    pub fn take_oldest(&self, member: &str) -> Result<Option<HintFile>, HintError> {
        let Some((seq, path)) = self.files(member).into_iter().next() else {
            return Ok(None);
        };
        {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            if open.get(member).is_some_and(|o| o.seq == seq) {
                open.remove(member);
            }
        }
        read_file(path).map(Some)
    }

    /// Deletes a member's hint files whose last write is older than `window` (every hint in
    /// them has expired), whether or not the member is reachable: hints for a member that
    /// stays down must not fill the disk. Returns how many hints were dropped. Blocking.
    pub fn expire(&self, member: &str, window: Duration) -> Result<usize, HintError> {
        let mut dropped = 0;
        for (seq, path) in self.files(member) {
            let age = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|modified| modified.elapsed().ok());
            if age.is_none_or(|age| age <= window) {
                continue;
            }
            {
                // No append lands in a file being deleted: it is closed first.
                let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
                if open.get(member).is_some_and(|o| o.seq == seq) {
                    open.remove(member);
                }
            }
            let file = read_file(path)?;
            std::fs::remove_file(&file.path).map_err(io(&file.path))?;
            dropped += file.hints.len() + file.corrupt_records;
        }
        Ok(dropped)
    }
}

/// A hint file's records (see [`HintStore::take_oldest`]).
fn read_file(path: PathBuf) -> Result<HintFile, HintError> {
    let mut bytes = Vec::new();
    File::open(&path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io(&path))?;
    let mut hints = Vec::new();
    let mut corrupt_records = 0;
    let mut at = 0usize;
    while at < bytes.len() {
        if let Some((hint, len)) = hint_at(&bytes[at..]) {
            hints.push(hint);
            at += len;
            continue;
        }
        // Damage (its checksum or body wrong, or its length field hit too) with an intact
        // record after it: skipped and counted, the records after it read. Nothing intact
        // after it: a torn tail (a write never acknowledged), which ends the list.
        match (at + 1..bytes.len())
            .find(|&next| plausible(&bytes[next..]) && hint_at(&bytes[next..]).is_some())
        {
            Some(next) => {
                corrupt_records += 1;
                at = next;
            }
            None => break,
        }
    }
    Ok(HintFile {
        path,
        hints,
        corrupt_records,
    })
}

/// Whether a hint record could start at `bytes`: its write time (milliseconds since the
/// epoch, after its length and checksum) lies between 2017 and a day from now. Checked before
/// the checksum when searching past damage, so that a damaged length is not followed by a
/// checksum over most of the file at every offset.
fn plausible(bytes: &[u8]) -> bool {
    const EARLIEST_MS: u64 = 1_500_000_000_000;
    bytes
        .get(8..16)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .is_some_and(|ms| (EARLIEST_MS..now_ms() + 86_400_000).contains(&ms))
}

/// The hint record at the start of `bytes` and its length, when its length, checksum and
/// request all hold.
fn hint_at(bytes: &[u8]) -> Option<(Hint, usize)> {
    let len = u32::from_be_bytes(bytes.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_be_bytes(bytes.get(4..8)?.try_into().ok()?);
    let body = bytes.get(8..16usize.checked_add(len)?)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let request = AppendRequest::decode(&body[8..]).ok()?;
    let written_ms = u64::from_be_bytes(body[..8].try_into().ok()?);
    Some((
        Hint {
            written_ms,
            request,
        },
        16 + len,
    ))
}

impl HintStore {
    /// Deletes a file whose hints were all delivered (or expired). A file that had corrupt
    /// records is kept beside the others as `<name>.corrupt` (never read again) for a look
    /// at what was lost; the copies of its batches on the other replicas are what
    /// anti-entropy repairs the owner from.
    pub fn finish(&self, file: &HintFile) -> Result<(), HintError> {
        if file.corrupt_records == 0 {
            return std::fs::remove_file(&file.path).map_err(io(&file.path));
        }
        let kept = file.path.with_extension("log.corrupt");
        std::fs::rename(&file.path, &kept).map_err(io(&file.path))
    }

    /// Whether a hint is older than the window.
    pub fn expired(hint: &Hint, window: Duration) -> bool {
        now_ms().saturating_sub(hint.written_ms) > window.as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use logcluster_proto::LogEntry;

    fn request(uid: u64) -> AppendRequest {
        AppendRequest {
            batch_uid: uid,
            hint_for: "storage-1".into(),
            repair: false,
            entries: vec![LogEntry {
                id: format!("{uid:016x}-00000000"),
                message: "hello".into(),
                ..LogEntry::default()
            }],
        }
    }

    /// A hint store in `dir` holding hints of batches 1, 2 and 3 for storage-1.
    fn three_hints(dir: &Path) -> HintStore {
        let store = HintStore::open(dir.to_path_buf()).expect("open");
        for uid in 1..=3 {
            store.append("storage-1", &request(uid)).expect("append");
        }
        store
    }

    /// The oldest hint file of storage-1 (there must be one).
    fn oldest(store: &HintStore) -> HintFile {
        store
            .take_oldest("storage-1")
            .expect("take")
            .expect("a file")
    }

    fn uids(file: &HintFile) -> Vec<u64> {
        file.hints.iter().map(|h| h.request.batch_uid).collect()
    }

    #[test]
    fn hints_survive_reopen_and_a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = three_hints(dir.path());
        assert!(store.append("../evil", &request(9)).is_err());
        drop(store);
        let store = HintStore::open(dir.path().to_path_buf()).expect("reopen");
        assert_eq!(store.members(), vec!["storage-1".to_string()]);
        let path = oldest(&store).path;
        // Tear the last record.
        let len = std::fs::metadata(&path).expect("meta").len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(len - 3))
            .expect("truncate");
        let file = oldest(&store);
        assert_eq!(uids(&file), vec![1, 2]);
        assert_eq!(file.corrupt_records, 0, "a torn tail is not corruption");
        store.finish(&file).expect("remove");
        assert!(!path.exists());
        assert!(store.members().is_empty());
        assert!(store.pending_bytes().is_empty());
    }

    #[test]
    fn a_corrupt_record_is_skipped_counted_and_its_file_kept_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = three_hints(dir.path());
        let path = oldest(&store).path;
        // Flip a byte in the body of the second record (records are the same size here).
        let mut bytes = std::fs::read(&path).expect("read");
        let record = bytes.len() / 3;
        bytes[record + 20] ^= 0x55;
        std::fs::write(&path, &bytes).expect("write");
        let file = oldest(&store);
        assert_eq!(
            uids(&file),
            vec![1, 3],
            "the records after the corrupt one are read"
        );
        assert_eq!(file.corrupt_records, 1);
        store.finish(&file).expect("set aside");
        assert!(!path.exists());
        assert!(path.with_extension("log.corrupt").exists());
        // Set aside for good: not read, not counted as pending.
        assert!(store.take_oldest("storage-1").expect("take").is_none());
        assert!(store.pending_bytes().values().all(|b| *b == 0));
    }

    #[test]
    fn files_older_than_the_window_are_dropped_even_while_their_member_is_down() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = three_hints(dir.path());
        store.append("storage-2", &request(9)).expect("append");
        let window = Duration::from_secs(3 * 3600);
        assert_eq!(
            store.expire("storage-1", window).expect("expire"),
            0,
            "recent"
        );
        // storage-1's file was last written four hours ago.
        let (_, path) = store.files("storage-1").pop().expect("a file");
        OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(SystemTime::now() - Duration::from_secs(4 * 3600)))
            .expect("age the file");
        assert_eq!(store.expire("storage-1", window).expect("expire"), 3);
        assert!(!path.exists());
        assert_eq!(store.members(), vec!["storage-2".to_string()]);
        // The file that was open for appends is closed: the next hint starts a new one.
        store.append("storage-1", &request(4)).expect("append");
        let file = oldest(&store);
        assert_eq!(uids(&file), vec![4]);
    }

    #[test]
    fn a_damaged_length_field_loses_only_its_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = three_hints(dir.path());
        let path = store.files("storage-1").pop().expect("a file").1;
        let mut bytes = std::fs::read(&path).expect("read");
        // The second record's length now runs past the end of the file.
        let record = bytes.len() / 3;
        bytes[record] = 0x7f;
        std::fs::write(&path, &bytes).expect("write");
        let file = oldest(&store);
        assert_eq!(uids(&file), vec![1, 3]);
        assert_eq!(
            file.corrupt_records, 1,
            "kept aside, not deleted as delivered"
        );
    }
}
