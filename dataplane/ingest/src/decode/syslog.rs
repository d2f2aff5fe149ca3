//! Syslog messages: RFC 5424 and RFC 3164 (with the variants that rsyslog and util-linux
//! `logger` actually send), and syslog payloads of many messages.
//!
//! Mapping: severity 0-2 → FATAL, 3 → ERROR, 4 → WARN, 5-6 → INFO, 7 → DEBUG, overridden by a
//! structured-data param named `level`; app-name / tag → service; hostname → host; SD params
//! `tenant`, `trace_id`, `service`, `host` set those core fields and every other SD param goes
//! to `fields` under its param name; the facility name, procid and msgid go to
//! `fields["syslog.facility"]`, `fields["syslog.procid"]`, `fields["syslog.msgid"]`.
//!
//! RFC 3164 timestamps carry no year and no zone: they are taken as UTC in the current year, or
//! the previous year when that would put them more than a day in the future. A 3164 message
//! without a valid timestamp keeps timestamp 0 and everything after the PRI is parsed for a tag
//! and message (as RFC 3164 §4.3.3 has relays do). A missing HOSTNAME (what `logger` sends to a
//! local socket) is recognised by the first word being a `TAG:` or `TAG[PID]:`.

use logcluster_proto::time::{NANOS_PER_SEC, days_from_civil, now_nanos, parse_rfc3339};
use logcluster_proto::{FieldValue, Level, LogEntry};

use super::framer::SyslogFramer;
use super::json::level_from_text;
use super::{DecodeContext, DecodeOutput, RecordError, RejectReason, level_from_severity};

const FACILITIES: [&str; 24] = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

fn invalid(message: impl Into<String>) -> RecordError {
    RecordError::new(0, RejectReason::InvalidSyslog, message)
}

/// Decodes one RFC 3164 or RFC 5424 message (trailing CR, LF and NUL are ignored). The error's
/// index is 0; callers set it. Bytes that are not UTF-8 (RFC 3164 allows any, RFC 5424 any
/// without a BOM) become U+FFFD: syslog has no way to tell a sender its message was refused.
pub fn decode_syslog_message(bytes: &[u8], ctx: &DecodeContext) -> Result<LogEntry, RecordError> {
    decode_syslog_text(bytes, ctx).map(|(entry, _)| entry)
}

/// Decodes one message into `out`: its record (counted in `repaired` if its bytes were not
/// all UTF-8), or its error at `index`.
pub(crate) fn decode_syslog_into(
    bytes: &[u8],
    index: usize,
    ctx: &DecodeContext,
    out: &mut DecodeOutput,
) {
    match decode_syslog_text(bytes, ctx) {
        Ok((entry, repaired)) => out.push_text_record(entry, repaired),
        Err(mut error) => {
            error.index = index;
            out.errors.push(error);
        }
    }
}

/// [`decode_syslog_message`], and whether invalid UTF-8 was replaced.
fn decode_syslog_text(bytes: &[u8], ctx: &DecodeContext) -> Result<(LogEntry, bool), RecordError> {
    let end = bytes
        .iter()
        .rposition(|b| !matches!(b, b'\n' | b'\r' | 0))
        .map_or(0, |i| i + 1);
    let start = bytes[..end]
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0))
        .unwrap_or(end);
    let (text, repaired) = super::lossy_utf8(&bytes[start..end]);
    let mut entry = parse(&text)?;
    ctx.fill_service(&mut entry);
    Ok((entry, repaired))
}

fn parse(text: &str) -> Result<LogEntry, RecordError> {
    let rest = text
        .strip_prefix('<')
        .ok_or_else(|| invalid("syslog message does not start with <PRI>"))?;
    let close = rest
        .bytes()
        .take(4)
        .position(|b| b == b'>')
        .ok_or_else(|| invalid("syslog PRI is not closed by '>'"))?;
    let digits = &rest[..close];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("syslog PRI is not a number"));
    }
    let pri: u16 = digits
        .parse()
        .map_err(|_| invalid("syslog PRI is not a number"))?;
    if pri > 191 {
        return Err(invalid(format!("syslog PRI {pri} is out of range")));
    }
    let rest = &rest[close + 1..];
    let facility = FACILITIES[usize::from(pri / 8)];
    let severity = (pri % 8) as u8;
    let mut entry = LogEntry {
        level: level_from_severity(severity) as i32,
        ..LogEntry::default()
    };
    entry
        .fields
        .insert("syslog.facility".into(), FieldValue::str(facility));
    if let Some(after_version) = rfc5424_version(rest) {
        parse_5424(after_version, &mut entry)?;
    } else {
        parse_3164(rest, &mut entry, now_nanos());
    }
    Ok(entry)
}

/// `VERSION SP` (1-3 digits, not starting with 0) after the PRI marks RFC 5424.
fn rfc5424_version(rest: &str) -> Option<&str> {
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if (1..=3).contains(&digits)
        && !rest.starts_with('0')
        && rest.as_bytes().get(digits) == Some(&b' ')
    {
        Some(&rest[digits + 1..])
    } else {
        None
    }
}

/// Splits off the next space-delimited header token; the remainder skips that one space.
fn token(rest: &str) -> (&str, &str) {
    match rest.find(' ') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    }
}

fn nil(value: &str) -> Option<&str> {
    (value != "-" && !value.is_empty()).then_some(value)
}

fn parse_5424(rest: &str, entry: &mut LogEntry) -> Result<(), RecordError> {
    let (timestamp, rest) = token(rest);
    let (hostname, rest) = token(rest);
    let (app, rest) = token(rest);
    let (procid, rest) = token(rest);
    let (msgid, rest) = token(rest);
    if let Some(ts) = nil(timestamp) {
        entry.timestamp = parse_rfc3339(ts).ok_or_else(|| {
            RecordError::new(
                0,
                RejectReason::BadTimestamp,
                format!("syslog timestamp {ts:?} is not RFC 3339"),
            )
        })?;
    }
    entry.host = nil(hostname).unwrap_or_default().to_string();
    entry.service = nil(app).unwrap_or_default().to_string();
    if let Some(procid) = nil(procid) {
        entry
            .fields
            .insert("syslog.procid".into(), FieldValue::str(procid));
    }
    if let Some(msgid) = nil(msgid) {
        entry
            .fields
            .insert("syslog.msgid".into(), FieldValue::str(msgid));
    }
    let message = if let Some(after) = rest.strip_prefix('-') {
        after
    } else if rest.starts_with('[') {
        parse_structured_data(rest, entry)?
    } else {
        // No SD at all: lenient, the rest is the message.
        rest
    };
    let message = message.strip_prefix(' ').unwrap_or(message);
    let message = message.strip_prefix('\u{feff}').unwrap_or(message);
    entry.message = message.to_string();
    Ok(())
}

/// Parses `[ID PARAM="VALUE" ...]...` and returns what follows it.
fn parse_structured_data<'a>(
    mut rest: &'a str,
    entry: &mut LogEntry,
) -> Result<&'a str, RecordError> {
    let bad = || invalid("syslog structured data is malformed");
    let mut level_text: Option<String> = None;
    while let Some(element) = rest.strip_prefix('[') {
        let id_len = element.find([' ', ']']).ok_or_else(bad)?;
        if id_len == 0 {
            return Err(bad());
        }
        let mut cursor = &element[id_len..];
        loop {
            if let Some(after) = cursor.strip_prefix(']') {
                cursor = after;
                break;
            }
            let params = cursor.strip_prefix(' ').ok_or_else(bad)?;
            let eq = params.find('=').ok_or_else(bad)?;
            let name = &params[..eq];
            if name.is_empty() || name.contains([' ', ']', '"']) {
                return Err(bad());
            }
            let value_start = params[eq + 1..].strip_prefix('"').ok_or_else(bad)?;
            let (value, after) = sd_value(value_start).ok_or_else(bad)?;
            cursor = after;
            match name {
                "tenant" => entry.tenant = value,
                "trace_id" => entry.trace_id = value,
                "service" => entry.service = value,
                "host" => entry.host = value,
                "level" => level_text = Some(value),
                _ => {
                    entry
                        .fields
                        .insert(name.to_string(), FieldValue::str(value));
                }
            }
        }
        rest = cursor;
    }
    if let Some(text) = level_text {
        match level_from_text(&text) {
            Some(level) if level != Level::Unspecified => entry.level = level as i32,
            _ => {
                entry
                    .fields
                    .insert("level_raw".into(), FieldValue::str(text));
            }
        }
    }
    Ok(rest)
}

/// An SD param value up to its closing quote, unescaping `\"`, `\\` and `\]` (a backslash
/// before anything else is kept, as RFC 5424 says).
fn sd_value(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, &text[i + 1..])),
            '\\' => match chars.clone().next() {
                Some((_, next @ ('"' | '\\' | ']'))) => {
                    value.push(next);
                    chars.next();
                }
                _ => value.push('\\'),
            },
            other => value.push(other),
        }
    }
    None
}

/// `Mmm dd hh:mm:ss` (day space- or zero-padded, optional fraction) → (month, day, secs of day,
/// nanos, rest after the following space).
fn bsd_timestamp(text: &str) -> Option<(u32, u32, i64, i64, &str)> {
    let month = MONTHS.iter().position(|m| text.get(..3) == Some(*m))? as u32 + 1;
    let rest = text.get(3..)?.strip_prefix(' ')?;
    let rest = rest.trim_start_matches(' ');
    let day_len = rest.bytes().take_while(u8::is_ascii_digit).count();
    if !(1..=2).contains(&day_len) {
        return None;
    }
    let day: u32 = rest[..day_len].parse().ok()?;
    // The year is not known yet: a leap year's month lengths (`Feb 30` and `Apr 31` are
    // mistakes, `Feb 29` may be right).
    if day > logcluster_proto::time::days_in_month(2000, month) {
        return None;
    }
    let rest = rest[day_len..].strip_prefix(' ')?;
    let b = rest.as_bytes();
    if b.len() < 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = rest.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (h, m, s) = (num(0..2)?, num(3..5)?, num(6..8)?);
    if !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let mut pos = 8;
    let mut nanos = 0i64;
    if b.get(pos) == Some(&b'.') {
        pos += 1;
        let digits = b[pos..].iter().take_while(|c| c.is_ascii_digit()).count();
        for (k, c) in b[pos..pos + digits].iter().enumerate() {
            if k < 9 {
                nanos = nanos * 10 + i64::from(c - b'0');
            }
        }
        nanos *= 10i64.pow(9u32.saturating_sub(digits as u32));
        pos += digits;
    }
    let rest = &rest[pos..];
    let rest = match rest.strip_prefix(' ') {
        Some(r) => r,
        None if rest.is_empty() => rest,
        None => return None,
    };
    Some((month, day, h * 3600 + m * 60 + s.min(59), nanos, rest))
}

/// Resolves a year-less timestamp against `now`.
fn infer_year(month: u32, day: u32, secs: i64, nanos: i64, now: i64) -> i64 {
    let year = logcluster_proto::time::civil_from_days(now.div_euclid(NANOS_PER_SEC * 86_400)).0;
    let at = |y: i64| (days_from_civil(y, month, day) * 86_400 + secs) * NANOS_PER_SEC + nanos;
    let this_year = at(year);
    if this_year > now + 86_400 * NANOS_PER_SEC {
        at(year - 1)
    } else {
        this_year
    }
}

/// `TAG:`, `TAG[PID]:` or `TAG[PID]` followed by a space → (tag, pid, message).
fn split_tag(text: &str) -> Option<(&str, Option<&str>, &str)> {
    let tag_len = text
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/' | b'@'))
        .count();
    if tag_len == 0 || tag_len > 64 {
        return None;
    }
    let tag = &text[..tag_len];
    let mut rest = &text[tag_len..];
    let mut pid = None;
    if let Some(after) = rest.strip_prefix('[') {
        let close = after.find(']')?;
        pid = Some(&after[..close]);
        rest = &after[close + 1..];
    }
    if let Some(after) = rest.strip_prefix(':') {
        Some((tag, pid, after.strip_prefix(' ').unwrap_or(after)))
    } else if pid.is_some() && (rest.is_empty() || rest.starts_with(' ')) {
        Some((tag, pid, rest.strip_prefix(' ').unwrap_or(rest)))
    } else {
        None
    }
}

fn parse_3164(rest: &str, entry: &mut LogEntry, now: i64) {
    let mut has_timestamp = true;
    let rest = if let Some((month, day, secs, nanos, after)) = bsd_timestamp(rest) {
        entry.timestamp = infer_year(month, day, secs, nanos, now);
        after
    } else {
        let (first, after) = token(rest);
        match parse_rfc3339(first) {
            Some(nanos) if first.as_bytes().first().is_some_and(u8::is_ascii_digit) => {
                entry.timestamp = nanos;
                after
            }
            _ => {
                has_timestamp = false;
                rest
            }
        }
    };
    let body = if let Some((tag, pid, message)) = split_tag(rest) {
        set_tag(entry, tag, pid);
        message
    } else if has_timestamp && !rest.is_empty() {
        let (host, after) = token(rest);
        entry.host = host.to_string();
        match split_tag(after) {
            Some((tag, pid, message)) => {
                set_tag(entry, tag, pid);
                message
            }
            None => after,
        }
    } else {
        rest
    };
    entry.message = body.to_string();
}

fn set_tag(entry: &mut LogEntry, tag: &str, pid: Option<&str>) {
    entry.service = tag.to_string();
    if let Some(pid) = pid.filter(|p| !p.is_empty()) {
        entry
            .fields
            .insert("syslog.procid".into(), FieldValue::str(pid));
    }
}

/// A syslog payload: messages one per line (LF; CRLF and NUL terminators tolerated) or
/// octet-counted (`LEN SP MSG`), auto-detected per message. Indexes are message ordinals.
pub(crate) fn decode_syslog_payload(payload: &[u8], ctx: &DecodeContext) -> DecodeOutput {
    let mut out = DecodeOutput::default();
    let mut framer = SyslogFramer::new(payload.len().max(1));
    framer.push(payload);
    let mut index = 0;
    let mut handle = |message: Result<Vec<u8>, super::FramingError>, out: &mut DecodeOutput| {
        match message {
            Ok(bytes) => decode_syslog_into(&bytes, index, ctx, out),
            Err(error) => {
                out.errors
                    .push(RecordError::new(index, error.reason(), error.to_string()))
            }
        }
        index += 1;
    };
    while let Some(message) = framer.next_message() {
        handle(message, &mut out);
        if out.over(ctx) {
            return out;
        }
    }
    if let Some(last) = framer.finish() {
        handle(last, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use logcluster_proto::Format;

    /// Builds the BTreeMap of expected fields in tests.
    fn field_map(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, FieldValue> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), FieldValue::str(*v)))
            .collect()
    }

    fn ctx() -> DecodeContext {
        DecodeContext::default()
    }

    fn decode(line: &str) -> LogEntry {
        decode_syslog_message(line.as_bytes(), &ctx()).expect("decodes")
    }

    #[test]
    fn benchmark_rfc5424_line_maps_every_field() {
        let entry = decode(
            "<131>1 2024-05-01T00:00:00.070Z payment-5f3a2c-9d1e0 payment - - [app@32473 tenant=\"acme\" trace_id=\"c662dcc5f36fb152848867f1486c89df\" level=\"ERROR\"] charge failed: gateway timeout provider=stripe after 10000ms txn_id=txn_1234\n",
        );
        assert_eq!(entry.timestamp, 1_714_521_600_070_000_000);
        assert_eq!(entry.host, "payment-5f3a2c-9d1e0");
        assert_eq!(entry.service, "payment");
        assert_eq!(entry.tenant, "acme");
        assert_eq!(entry.trace_id, "c662dcc5f36fb152848867f1486c89df");
        assert_eq!(entry.level_enum(), Level::Error);
        assert_eq!(
            entry.message,
            "charge failed: gateway timeout provider=stripe after 10000ms txn_id=txn_1234"
        );
        assert_eq!(entry.fields, field_map(&[("syslog.facility", "local0")]));
        assert_eq!(entry.id, "");
        assert_eq!(entry.received_at, 0);
    }

    #[test]
    fn util_linux_logger_rfc5424_sample() {
        // `logger --rfc5424 -n host -P 514 -t myapp -p local3.warning 'disk almost full'`
        let entry = decode(
            "<156>1 2024-05-01T14:02:03.123456+02:00 web-1 myapp 4242 - [timeQuality tzKnown=\"1\" isSynced=\"1\" syncAccuracy=\"216500\"] disk almost full",
        );
        assert_eq!(entry.timestamp, 1_714_564_923_123_456_000);
        assert_eq!(entry.level_enum(), Level::Warn);
        assert_eq!(entry.service, "myapp");
        assert_eq!(entry.host, "web-1");
        assert_eq!(entry.message, "disk almost full");
        assert_eq!(
            entry.fields,
            field_map(&[
                ("syslog.facility", "local3"),
                ("syslog.procid", "4242"),
                ("tzKnown", "1"),
                ("isSynced", "1"),
                ("syncAccuracy", "216500"),
            ])
        );
    }

    #[test]
    fn rsyslog_protocol23_format_with_bom_msgid_and_escapes() {
        // RSYSLOG_SyslogProtocol23Format: "<%PRI%>1 %TIMESTAMP:::date-rfc3339% %HOSTNAME%
        // %APP-NAME% %PROCID% %MSGID% %STRUCTURED-DATA% %msg%\n"
        let line = "<38>1 2024-05-01T12:00:01.5Z gw sshd 812 AUTH [meta@1 path=\"C:\\\\tmp \\\"x\\\" \\] \\n\"][other@2 service=\"ssh\"] \u{feff}Accepted publickey for deploy\n";
        let entry = decode(line);
        assert_eq!(entry.level_enum(), Level::Info);
        assert_eq!(entry.service, "ssh");
        assert_eq!(entry.message, "Accepted publickey for deploy");
        assert_eq!(
            entry.fields.get("path"),
            Some(&FieldValue::str("C:\\tmp \"x\" ] \\n"))
        );
        assert_eq!(
            entry.fields.get("syslog.msgid"),
            Some(&FieldValue::str("AUTH"))
        );
        assert_eq!(
            entry.fields.get("syslog.facility"),
            Some(&FieldValue::str("auth"))
        );
    }

    #[test]
    fn nil_values_and_missing_sd_are_tolerated() {
        let entry = decode("<14>1 - - - - - -");
        assert_eq!(entry.timestamp, 0);
        assert_eq!(entry.host, "");
        assert_eq!(entry.service, "unknown");
        assert_eq!(entry.message, "");
        let entry = decode("<14>1 2024-05-01T00:00:00Z h app - - no structured data here");
        assert_eq!(entry.message, "no structured data here");
    }

    #[test]
    fn rsyslog_forward_format_has_an_iso_timestamp_and_no_version() {
        // RSYSLOG_ForwardFormat: "<%PRI%>%TIMESTAMP:::date-rfc3339% %HOSTNAME%
        // %syslogtag:1:32%%msg:::sp-if-no-1st-sp%%msg%"
        let entry = decode(
            "<86>2024-05-01T14:00:00.123456+00:00 bastion sshd[1234]: Accepted publickey for ops from 10.0.0.5 port 52144 ssh2",
        );
        assert_eq!(entry.timestamp, 1_714_572_000_123_456_000);
        assert_eq!(entry.host, "bastion");
        assert_eq!(entry.service, "sshd");
        assert_eq!(entry.level_enum(), Level::Info);
        assert_eq!(
            entry.fields.get("syslog.procid"),
            Some(&FieldValue::str("1234"))
        );
        assert_eq!(
            entry.fields.get("syslog.facility"),
            Some(&FieldValue::str("authpriv"))
        );
        assert!(entry.message.starts_with("Accepted publickey"));
    }

    #[test]
    fn logger_rfc3164_over_the_network_and_to_a_local_socket() {
        let now = 1_714_572_000 * NANOS_PER_SEC; // 2024-05-01T14:00:00Z
        // `logger --rfc3164 -n host -t myuser hello world`
        let mut entry = LogEntry::default();
        parse_3164("May  1 13:59:58 web-1 myuser: hello world", &mut entry, now);
        assert_eq!(entry.timestamp, now - 2 * NANOS_PER_SEC);
        assert_eq!(entry.host, "web-1");
        assert_eq!(entry.service, "myuser");
        assert_eq!(entry.message, "hello world");
        // The same through /dev/log: no HOSTNAME.
        let mut entry = LogEntry::default();
        parse_3164("May  1 13:59:58 myuser[77]: hello world", &mut entry, now);
        assert_eq!(entry.host, "");
        assert_eq!(entry.service, "myuser");
        assert_eq!(
            entry.fields.get("syslog.procid"),
            Some(&FieldValue::str("77"))
        );
        assert_eq!(entry.message, "hello world");

        let entry = decode("<13>May  1 13:59:58 web-1 myuser: hello world");
        assert_eq!(entry.level_enum(), Level::Info);
        assert_eq!(
            entry.fields.get("syslog.facility"),
            Some(&FieldValue::str("user"))
        );
    }

    #[test]
    fn year_rolls_back_when_the_date_would_be_in_the_future() {
        let now = 1_704_067_200 * NANOS_PER_SEC; // 2024-01-01T00:00:00Z
        let mut entry = LogEntry::default();
        parse_3164("Dec 31 23:59:59 host app: late", &mut entry, now);
        assert_eq!(entry.timestamp, now - NANOS_PER_SEC);
        let mut entry = LogEntry::default();
        parse_3164("Jan  1 12:00:00 host app: soon", &mut entry, now);
        assert_eq!(entry.timestamp, now + 12 * 3600 * NANOS_PER_SEC);
    }

    /// A day its month does not have is no timestamp (not the next month's first day): the
    /// message keeps the text, and the node stamps it with its arrival.
    #[test]
    fn an_impossible_bsd_date_is_no_timestamp() {
        let entry = decode("<14>Feb 30 10:00:00 host app: after the date");
        assert_eq!(entry.timestamp, 0);
        assert!(entry.message.contains("Feb 30"), "{}", entry.message);
        assert_ne!(decode("<14>Feb 29 10:00:00 host app: leap").timestamp, 0);
        assert_eq!(decode("<14>Apr 31 10:00:00 host app: x").timestamp, 0);
    }

    #[test]
    fn message_without_timestamp_keeps_everything_after_pri() {
        let entry = decode("<11>just some text");
        assert_eq!(entry.timestamp, 0);
        assert_eq!(entry.host, "");
        assert_eq!(entry.message, "just some text");
        assert_eq!(entry.level_enum(), Level::Error);
    }

    #[test]
    fn malformed_messages_are_rejected_with_a_reason() {
        let cases: [(&[u8], RejectReason); 5] = [
            (b"no pri at all", RejectReason::InvalidSyslog),
            (b"<999>1 - - - - - -", RejectReason::InvalidSyslog),
            (b"<1x>hello", RejectReason::InvalidSyslog),
            (b"<14>1 yesterday h a - - - m", RejectReason::BadTimestamp),
            (
                b"<14>1 - h a - - [id k=\"unterminated] m",
                RejectReason::InvalidSyslog,
            ),
        ];
        for (bytes, reason) in cases {
            let err = decode_syslog_message(bytes, &ctx()).expect_err("rejected");
            assert_eq!(err.reason, reason, "{}", String::from_utf8_lossy(bytes));
        }
    }

    /// Syslog cannot tell its sender a message was refused: bytes that are not UTF-8 (a
    /// Latin-1 device, a message cut inside a character) become U+FFFD, counted, and the
    /// rest of the message is kept.
    #[test]
    fn bytes_that_are_not_utf8_are_replaced_not_refused() {
        let mut out = DecodeOutput::default();
        for (index, bytes) in [
            &b"<14>1 - h a - - - caf\xe9 cr\xe8me"[..],
            b"<14>Nov 24 10:00:00 box app: \xff\xfe ok",
            b"<14>1 - h a - - - plain",
        ]
        .into_iter()
        .enumerate()
        {
            decode_syslog_into(bytes, index, &ctx(), &mut out);
        }
        let messages: Vec<&str> = out
            .records
            .iter()
            .map(|r| r.entry.message.as_str())
            .collect();
        assert_eq!(
            messages,
            ["caf\u{fffd} cr\u{fffd}me", "\u{fffd}\u{fffd} ok", "plain"]
        );
        assert_eq!((out.repaired, out.errors.len()), (2, 0));
    }

    #[test]
    fn unknown_sd_level_keeps_severity_and_raw_text() {
        let entry = decode("<12>1 - h a - - [x level=\"loud\"] m");
        assert_eq!(entry.level_enum(), Level::Warn);
        assert_eq!(
            entry.fields.get("level_raw"),
            Some(&FieldValue::str("loud"))
        );
    }

    #[test]
    fn payload_of_lines_isolates_errors_and_accepts_crlf_nul_and_octet_counting() {
        let payload = b"<13>1 - h a - - - first\r\nbroken line\n<13>May  1 00:00:00 h t: third\0\n25 <13>1 - h a - - - counted\n<13>1 - h a - - - last";
        let out = super::super::decode_payload(Format::Syslog, payload, &ctx()).expect("decodes");
        let messages: Vec<_> = out
            .records
            .iter()
            .map(|r| r.entry.message.as_str())
            .collect();
        assert_eq!(messages, ["first", "third", "counted", "last"]);
        assert_eq!(out.errors.len(), 1);
        assert_eq!(out.errors[0].index, 1);
        assert_eq!(out.errors[0].reason, RejectReason::InvalidSyslog);
    }
}
