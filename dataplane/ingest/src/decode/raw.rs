//! Raw text payloads: lines auto-detected one by one, or a whole journal export stream.
//!
//! A line starting with `{` is a JSON object (the lenient mapping of [`super::json`]); one
//! starting with `<digit` is a syslog message; anything else is plain text whose message is the
//! whole line (without a trailing CR). For plain text, a leading RFC 3339 timestamp (`2024-…T…`
//! or `2024-… hh:mm:ss`) sets the timestamp, and the level is guessed from the first word after
//! it when that word is bracketed (`[WARN]`), followed by a colon (`error:`), upper-case
//! (`ERROR`), or a `level=`/`lvl=`/`severity=` pair; failing that, from a `level=` pair anywhere
//! in the line (logfmt). A lower-case bare word (`error connecting…`) is not taken as a level.

use logcluster_proto::time::parse_rfc3339;
use logcluster_proto::{Level, LogEntry};

use super::journald::{decode_journald, looks_like_journald};
use super::json::{decode_json_line, level_from_text};
use super::syslog::decode_syslog_into;
use super::{DecodeContext, DecodeOutput};

/// Decodes a raw payload; indexes are line numbers.
pub(crate) fn decode_raw(payload: &[u8], ctx: &DecodeContext) -> DecodeOutput {
    if looks_like_journald(payload) {
        return decode_journald(payload, ctx);
    }
    let mut out = DecodeOutput::default();
    for (index, line) in payload.split(|b| *b == b'\n').enumerate() {
        if out.over(ctx) {
            break;
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(first) = line.iter().position(|b| !b.is_ascii_whitespace()) else {
            continue;
        };
        let content = &line[first..];
        if content[0] == b'{' {
            decode_json_line(content, index, ctx, &mut out);
        } else if content[0] == b'<' && content.get(1).is_some_and(u8::is_ascii_digit) {
            decode_syslog_into(content, index, ctx, &mut out);
        } else {
            // Bytes that are not UTF-8 (a Latin-1 file) become U+FFFD rather than lose the line.
            let (text, repaired) = super::lossy_utf8(line);
            out.push_text_record(plain_text(&text, ctx), repaired);
        }
    }
    out
}

/// A leading timestamp: one token, or a date and a time token. Returns nanos and the rest.
fn leading_timestamp(text: &str) -> Option<(i64, &str)> {
    if !text.as_bytes().first().is_some_and(u8::is_ascii_digit) || text.len() < 19 {
        return None;
    }
    let first_end = text.find(' ').unwrap_or(text.len());
    if let Some(nanos) = parse_rfc3339(&text[..first_end]) {
        return Some((nanos, text[first_end..].trim_start()));
    }
    let after_first = &text[first_end..];
    let second = after_first.trim_start_matches(' ');
    let second_end =
        first_end + (after_first.len() - second.len()) + second.find(' ').unwrap_or(second.len());
    parse_rfc3339(&text[..second_end]).map(|nanos| (nanos, text[second_end..].trim_start()))
}

/// A level from a `key=value` word.
fn level_pair(word: &str) -> Option<Level> {
    let (key, value) = word.split_once('=')?;
    if !matches!(key, "level" | "lvl" | "severity" | "loglevel") {
        return None;
    }
    level_from_text(value.trim_matches(|c| c == '"' || c == '\''))
}

/// A level from the first word of a line, under the rules of the module documentation.
fn leading_level(word: &str) -> Option<Level> {
    if let Some(level) = level_pair(word) {
        return Some(level);
    }
    let bracketed = word
        .strip_prefix('[')
        .and_then(|w| w.strip_suffix(']').or_else(|| w.strip_suffix("]:")))
        .or_else(|| word.strip_prefix('(').and_then(|w| w.strip_suffix(')')));
    let candidate = match bracketed {
        Some(inner) => inner,
        None => match word.strip_suffix(':') {
            Some(inner) => inner,
            None if word.bytes().all(|b| b.is_ascii_uppercase()) => word,
            None => return None,
        },
    };
    if candidate.is_empty() || !candidate.bytes().all(|b| b.is_ascii_alphabetic()) {
        return None;
    }
    Level::parse(candidate).filter(|l| *l != Level::Unspecified)
}

fn plain_text(line: &str, ctx: &DecodeContext) -> LogEntry {
    let trimmed = line.trim_start();
    let (timestamp, rest) = leading_timestamp(trimmed).unwrap_or((0, trimmed));
    let first_word = rest.split_ascii_whitespace().next().unwrap_or_default();
    let level = leading_level(first_word)
        .or_else(|| rest.split_ascii_whitespace().find_map(level_pair))
        .unwrap_or(Level::Unspecified);
    let mut entry = LogEntry {
        timestamp,
        level: level as i32,
        message: line.to_string(),
        ..LogEntry::default()
    };
    ctx.fill_service(&mut entry);
    entry
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::RejectReason;
    use logcluster_proto::FieldValue;

    fn ctx() -> DecodeContext {
        DecodeContext::default()
    }

    fn plain(line: &str) -> LogEntry {
        plain_text(line, &ctx())
    }

    #[test]
    fn plain_text_levels_are_guessed_conservatively() {
        assert_eq!(
            plain("ERROR failed to open /var/lib/x").level_enum(),
            Level::Error
        );
        assert_eq!(plain("[WARN] disk at 91%").level_enum(), Level::Warn);
        assert_eq!(plain("info: started").level_enum(), Level::Info);
        assert_eq!(
            plain("ts=2024-05-01T00:00:00Z level=debug msg=\"cache miss\"").level_enum(),
            Level::Debug
        );
        assert_eq!(
            plain("error connecting is not a level word").level_enum(),
            Level::Unspecified
        );
        assert_eq!(plain("plain words only").level_enum(), Level::Unspecified);
    }

    #[test]
    fn leading_timestamps_are_parsed_and_the_line_is_kept_whole() {
        let entry = plain("2024-05-01T14:00:00.5Z [ERROR] payment declined\r");
        assert_eq!(entry.timestamp, 1_714_572_000_500_000_000);
        assert_eq!(entry.level_enum(), Level::Error);
        assert_eq!(
            entry.message,
            "2024-05-01T14:00:00.5Z [ERROR] payment declined\r"
        );
        let entry = plain("2024-05-01 14:00:00,250 WARNING low memory");
        assert_eq!(entry.timestamp, 1_714_572_000_250_000_000);
        assert_eq!(entry.level_enum(), Level::Warn);
        assert_eq!(entry.service, "unknown");
    }

    #[test]
    fn mixed_lines_are_each_detected() {
        let payload = b"{\"message\":\"json line\",\"level\":\"warn\",\"user\":\"ann\"}\r\n\
<13>1 2024-05-01T00:00:00Z h app - - - syslog line\n\
\n\
2024-05-01T00:00:00Z INFO plain line\r\n\
{\"message\": broken\n\
<99999>bad syslog\n\
caf\xe9 latin-1\n\
<14>Nov 24 10:00:00 box app: caf\xe9 latin-1 syslog\n";
        let out = decode_raw(payload, &ctx());
        let messages: Vec<_> = out
            .records
            .iter()
            .map(|r| r.entry.message.as_str())
            .collect();
        assert_eq!(
            messages,
            [
                "json line",
                "syslog line",
                "2024-05-01T00:00:00Z INFO plain line",
                "caf\u{fffd} latin-1",
                "caf\u{fffd} latin-1 syslog"
            ]
        );
        // Bytes that are not UTF-8 are replaced, not a reason to lose the line.
        assert_eq!(out.repaired, 2);
        assert!(out.records[0].original.is_some());
        assert_eq!(
            out.records[0].entry.fields.get("user"),
            Some(&FieldValue::str("ann"))
        );
        assert_eq!(out.records[1].entry.service, "app");
        assert_eq!(out.records[2].entry.level_enum(), Level::Info);
        let errors: Vec<_> = out.errors.iter().map(|e| (e.index, e.reason)).collect();
        assert_eq!(
            errors,
            [
                (4, RejectReason::InvalidJson),
                (5, RejectReason::InvalidSyslog)
            ]
        );
    }

    #[test]
    fn raw_payload_in_journal_export_format_is_decoded_as_journald() {
        let payload = b"__REALTIME_TIMESTAMP=1714572000000000\nPRIORITY=4\nSYSLOG_IDENTIFIER=kernel\nMESSAGE=CPU0: temperature above threshold\n\n";
        let out = decode_raw(payload, &ctx());
        assert_eq!(out.records.len(), 1);
        assert_eq!(out.records[0].entry.service, "kernel");
        assert_eq!(out.records[0].entry.level_enum(), Level::Warn);
    }
}
