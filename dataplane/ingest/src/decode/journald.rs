//! The systemd journal export format (`journalctl -o export`, `systemd-journal-upload`).
//!
//! Entries are separated by an empty line. A text field is `NAME=value\n`; a binary field (used
//! for values with newlines or non-text bytes) is `NAME\n`, a 64-bit little-endian length, the
//! data, and `\n`. Mapping: `MESSAGE` → message, `PRIORITY` → level (syslog severity),
//! `_HOSTNAME` → host, `SYSLOG_IDENTIFIER` else `_SYSTEMD_UNIT` else `_COMM` → service,
//! `__REALTIME_TIMESTAMP` (µs) → timestamp, `TRACE_ID` / `trace_id` → trace id; every other
//! field (including the service candidates not chosen) goes to `fields` under its own name.
//!
//! A malformed entry is rejected with its ordinal; decoding resumes after the next empty line
//! when one can be found. A field value that is not UTF-8 rejects its entry.

use std::collections::BTreeMap;

use logcluster_proto::{FieldValue, Level, LogEntry};

use super::{DecodeContext, DecodeOutput, RecordError, RejectReason, level_from_severity};

/// Longest field name accepted (journald itself allows 64).
const MAX_NAME: usize = 256;

/// A field as found in the payload: name and value bytes.
type RawField<'a> = (&'a [u8], &'a [u8]);
/// Why an entry was rejected, before its index is known.
type Rejection = (RejectReason, String);

fn malformed(message: &str) -> Rejection {
    (RejectReason::InvalidJournald, message.to_string())
}

/// Parses the fields of one entry starting at `*pos`; on return `*pos` is after the entry's
/// empty line (or at the end). Errors leave `*pos` where the problem was found.
fn parse_fields<'a>(payload: &'a [u8], pos: &mut usize) -> Result<Vec<RawField<'a>>, Rejection> {
    let mut fields = Vec::new();
    loop {
        let rest = &payload[*pos..];
        if rest.is_empty() {
            return Ok(fields);
        }
        if rest[0] == b'\n' {
            *pos += 1;
            return Ok(fields);
        }
        let name_end = rest
            .iter()
            .take(MAX_NAME + 1)
            .position(|b| matches!(b, b'=' | b'\n'))
            .ok_or_else(|| malformed("journal field name is unterminated or too long"))?;
        let name = &rest[..name_end];
        if name.is_empty() || !name.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_') {
            return Err(malformed("journal field name is not [A-Za-z0-9_]+"));
        }
        if rest[name_end] == b'=' {
            let value_start = name_end + 1;
            let value_len = rest[value_start..]
                .iter()
                .position(|b| *b == b'\n')
                .unwrap_or(rest.len() - value_start);
            fields.push((name, &rest[value_start..value_start + value_len]));
            *pos += (value_start + value_len + 1).min(rest.len());
        } else {
            let len_start = name_end + 1;
            let len_bytes: [u8; 8] = rest
                .get(len_start..len_start + 8)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| malformed("journal binary field is truncated"))?;
            let len = u64::from_le_bytes(len_bytes);
            let data_start = len_start + 8;
            let available = (rest.len() - data_start) as u64;
            if len >= available {
                return Err(malformed("journal binary field is longer than the payload"));
            }
            let data_end = data_start + len as usize;
            if rest[data_end] != b'\n' {
                return Err(malformed(
                    "journal binary field does not end with a newline",
                ));
            }
            fields.push((name, &rest[data_start..data_end]));
            *pos += data_end + 1;
        }
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, Rejection> {
    std::str::from_utf8(bytes).map_err(|_| {
        (
            RejectReason::InvalidUtf8,
            "journal field name is not valid UTF-8".to_string(),
        )
    })
}

/// The entry of a journal record, and whether a value's invalid UTF-8 was replaced by U+FFFD
/// (journald keeps such a `MESSAGE` as a binary field; refusing it would lose the line).
fn to_entry(raw: Vec<RawField<'_>>, ctx: &DecodeContext) -> Result<(LogEntry, bool), Rejection> {
    let mut entry = LogEntry::default();
    let mut fields = BTreeMap::new();
    let mut services: [Option<std::borrow::Cow<'_, str>>; 3] = [None, None, None];
    let mut repaired = false;
    for (name, value) in raw {
        // Names were checked to be ASCII.
        let name = utf8(name)?;
        let (value, lossy) = super::lossy_utf8(value);
        repaired |= lossy;
        match name {
            "MESSAGE" => entry.message = value.to_string(),
            "PRIORITY" => match value.trim().parse::<u8>() {
                Ok(p) if p <= 7 => entry.level = level_from_severity(p) as i32,
                _ => {
                    entry.level = Level::Unspecified as i32;
                    fields.insert("level_raw".to_string(), FieldValue::str(value));
                }
            },
            "_HOSTNAME" => entry.host = value.to_string(),
            "__REALTIME_TIMESTAMP" => {
                entry.timestamp = value
                    .trim()
                    .parse::<i64>()
                    .ok()
                    .filter(|us| *us >= 0)
                    .and_then(|us| us.checked_mul(1_000))
                    .ok_or_else(|| {
                        (
                            RejectReason::BadTimestamp,
                            format!("__REALTIME_TIMESTAMP {value:?} is not microseconds"),
                        )
                    })?;
            }
            "TRACE_ID" | "trace_id" => entry.trace_id = value.to_string(),
            "SYSLOG_IDENTIFIER" => services[0] = Some(value),
            "_SYSTEMD_UNIT" => services[1] = Some(value),
            "_COMM" => services[2] = Some(value),
            _ => {
                fields.insert(name.to_string(), FieldValue::str(value));
            }
        }
    }
    const SERVICE_FIELDS: [&str; 3] = ["SYSLOG_IDENTIFIER", "_SYSTEMD_UNIT", "_COMM"];
    let mut chosen = false;
    for (name, value) in SERVICE_FIELDS.iter().zip(services) {
        let Some(value) = value else { continue };
        if !chosen && !value.is_empty() {
            entry.service = value.into_owned();
            chosen = true;
        } else {
            fields.insert((*name).to_string(), FieldValue::str(value));
        }
    }
    entry.fields = fields;
    ctx.fill_service(&mut entry);
    Ok((entry, repaired))
}

/// Finds the end of the empty line that ends the entry containing `from`.
fn resync(payload: &[u8], from: usize) -> Option<usize> {
    let search_from = from.saturating_sub(1);
    payload[search_from..]
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| search_from + i + 2)
}

/// Decodes a journal export stream; indexes are entry ordinals.
pub(crate) fn decode_journald(payload: &[u8], ctx: &DecodeContext) -> DecodeOutput {
    let mut out = DecodeOutput::default();
    let mut pos = 0usize;
    let mut index = 0usize;
    while pos < payload.len() && !out.over(ctx) {
        let entry_start = pos;
        match parse_fields(payload, &mut pos) {
            Ok(raw) if raw.is_empty() => continue,
            Ok(raw) => {
                match to_entry(raw, ctx) {
                    Ok((entry, repaired)) => out.push_text_record(entry, repaired),
                    Err((reason, message)) => {
                        out.errors.push(RecordError::new(index, reason, message))
                    }
                }
                index += 1;
            }
            Err((reason, message)) => {
                out.errors.push(RecordError::new(index, reason, message));
                index += 1;
                match resync(payload, pos.max(entry_start)) {
                    Some(next) => pos = next,
                    None => break,
                }
            }
        }
    }
    out
}

/// Whether a payload looks like journal export format: its first line is a field (`NAME=` or a
/// binary field name) and it has a `MESSAGE` or `__REALTIME_TIMESTAMP` field.
pub(crate) fn looks_like_journald(payload: &[u8]) -> bool {
    let first_line = payload.split(|b| *b == b'\n').next().unwrap_or_default();
    let name_len = first_line
        .iter()
        .take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || **b == b'_')
        .count();
    if name_len == 0 || !(first_line.get(name_len) == Some(&b'=') || name_len == first_line.len()) {
        return false;
    }
    let starts = |needle: &[u8]| {
        payload.starts_with(needle)
            || payload
                .windows(needle.len() + 1)
                .any(|w| w[0] == b'\n' && &w[1..] == needle)
    };
    starts(b"MESSAGE=") || starts(b"MESSAGE\n") || starts(b"__REALTIME_TIMESTAMP=")
}

#[cfg(test)]
mod tests {
    use super::*;
    use logcluster_proto::Format;

    fn ctx() -> DecodeContext {
        DecodeContext::default()
    }

    fn binary_field(out: &mut Vec<u8>, name: &str, data: &[u8]) {
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(&(data.len() as u64).to_le_bytes());
        out.extend_from_slice(data);
        out.push(b'\n');
    }

    const SSHD_ENTRY: &str = "__CURSOR=s=739ad463348b4ceca5a9e69c95a3c93f;i=4ece7;b=6c7c6013a8194b2a8a1b4e2ab6e8e7c3;m=20f7a2f5d;t=6176df7c1a2b3;x=d0e9d8b2c5f8b2d2\n\
__REALTIME_TIMESTAMP=1714572000123456\n\
__MONOTONIC_TIMESTAMP=8850976605\n\
_BOOT_ID=6c7c6013a8194b2a8a1b4e2ab6e8e7c3\n\
PRIORITY=6\n\
_UID=0\n\
_COMM=sshd\n\
_SYSTEMD_UNIT=ssh.service\n\
SYSLOG_FACILITY=4\n\
SYSLOG_IDENTIFIER=sshd\n\
_PID=1234\n\
_HOSTNAME=bastion\n\
MESSAGE=Accepted publickey for ops from 10.0.0.5 port 52144 ssh2\n\
\n";

    #[test]
    fn export_entry_maps_core_fields_and_keeps_the_rest() {
        let out = decode_journald(SSHD_ENTRY.as_bytes(), &ctx());
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        let entry = &out.records[0].entry;
        assert_eq!(entry.timestamp, 1_714_572_000_123_456_000);
        assert_eq!(entry.level_enum(), Level::Info);
        assert_eq!(entry.host, "bastion");
        assert_eq!(entry.service, "sshd");
        assert_eq!(
            entry.message,
            "Accepted publickey for ops from 10.0.0.5 port 52144 ssh2"
        );
        assert_eq!(entry.fields.get("_PID"), Some(&FieldValue::str("1234")));
        assert_eq!(
            entry.fields.get("_SYSTEMD_UNIT"),
            Some(&FieldValue::str("ssh.service"))
        );
        assert_eq!(entry.fields.get("_COMM"), Some(&FieldValue::str("sshd")));
        assert!(entry.fields.contains_key("__CURSOR"));
        assert!(!entry.fields.contains_key("MESSAGE"));
    }

    #[test]
    fn binary_field_carries_a_multiline_message() {
        let mut payload = b"__REALTIME_TIMESTAMP=1714572000000000\nPRIORITY=3\n".to_vec();
        binary_field(
            &mut payload,
            "MESSAGE",
            b"panic: boom\n\ngoroutine 1 [running]:\nmain.main()",
        );
        payload.extend_from_slice(b"_SYSTEMD_UNIT=worker.service\nTRACE_ID=abc123\n\n");
        payload.extend_from_slice(SSHD_ENTRY.as_bytes());
        let out = decode_payload_journald(&payload);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert_eq!(out.records.len(), 2);
        let entry = &out.records[0].entry;
        assert_eq!(
            entry.message,
            "panic: boom\n\ngoroutine 1 [running]:\nmain.main()"
        );
        assert_eq!(entry.level_enum(), Level::Error);
        assert_eq!(entry.service, "worker.service");
        assert_eq!(entry.trace_id, "abc123");
    }

    fn decode_payload_journald(payload: &[u8]) -> DecodeOutput {
        super::super::decode_payload(Format::Journald, payload, &ctx()).expect("never fails")
    }

    #[test]
    fn malformed_entry_is_rejected_and_the_next_one_still_decodes() {
        let mut payload = b"MESSAGE=first\n\nbad name!=x\nMESSAGE=lost\n\n".to_vec();
        // A binary field whose length runs past the end of its entry.
        payload.extend_from_slice(b"MESSAGE\n");
        payload.extend_from_slice(&1_000_000u64.to_le_bytes());
        payload.extend_from_slice(
            b"short\n\n__REALTIME_TIMESTAMP=soon\nMESSAGE=x\n\nMESSAGE=caf\xc3\n\n",
        );
        payload.extend_from_slice(SSHD_ENTRY.as_bytes());
        let out = decode_payload_journald(&payload);
        let messages: Vec<_> = out
            .records
            .iter()
            .map(|r| r.entry.message.as_str())
            .collect();
        assert_eq!(messages[0], "first");
        // A value that is not UTF-8 is stored with U+FFFD, and counted.
        assert_eq!(messages[1], "caf\u{fffd}");
        assert_eq!(messages.len(), 3);
        assert_eq!(out.repaired, 1);
        let errors: Vec<_> = out.errors.iter().map(|e| (e.index, e.reason)).collect();
        assert_eq!(
            errors,
            [
                (1, RejectReason::InvalidJournald),
                (2, RejectReason::InvalidJournald),
                (3, RejectReason::BadTimestamp),
            ]
        );
    }

    #[test]
    fn detection_needs_a_field_line_and_a_message_or_timestamp() {
        assert!(looks_like_journald(SSHD_ENTRY.as_bytes()));
        assert!(looks_like_journald(b"MESSAGE\n\x05\0\0\0\0\0\0\0hello\n\n"));
        assert!(!looks_like_journald(b"USER=root logged in\nsomething else"));
        assert!(!looks_like_journald(b"hello world\nMESSAGE=x\n"));
    }
}
