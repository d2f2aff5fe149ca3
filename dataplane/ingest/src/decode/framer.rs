//! Streaming framing of syslog over TCP (RFC 6587): octet counting (`LEN SP MSG`) or
//! non-transparent framing (messages terminated by LF or NUL), auto-detected per message.
//!
//! A message that starts with a digit run of at most 10 digits followed by a space is
//! octet-counted; anything else (normally `<PRI>…`) runs to the next LF or NUL, with a trailing
//! CR dropped. Empty messages (blank lines, stray NULs) are skipped. The framer holds at most
//! one message plus the last pushed chunk: a message longer than the maximum is reported once
//! as [`FramingError::TooLarge`] and its bytes are discarded up to the next LF, where framing
//! resumes.

use super::RejectReason;

/// Longest digit run read as an octet count.
const MAX_LEN_DIGITS: usize = 10;
/// Consumed bytes kept before the buffer is compacted.
const COMPACT_AT: usize = 64 * 1024;

/// Why the framer could not produce a message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("syslog message of {len} bytes or more exceeds the maximum of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("octet-counted syslog message ended after {available} of {expected} bytes")]
    Truncated { expected: usize, available: usize },
}

impl FramingError {
    /// The metrics classification of this failure.
    pub fn reason(&self) -> RejectReason {
        match self {
            FramingError::TooLarge { .. } => RejectReason::TooLarge,
            FramingError::Truncated { .. } => RejectReason::InvalidSyslog,
        }
    }
}

/// Splits a TCP byte stream into syslog messages; see the module documentation.
#[derive(Debug)]
pub struct SyslogFramer {
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    start: usize,
    max_message: usize,
    /// Discarding the rest of an oversize message until the next LF.
    discarding: bool,
}

/// What the bytes at the start of a message say about its framing.
enum Header {
    /// Octet counting: body length and header length (digits and the space).
    Counted { len: usize, header: usize },
    /// Not enough bytes yet to tell.
    Undecided,
    /// LF/NUL-terminated.
    Terminated,
}

impl SyslogFramer {
    /// A framer that refuses messages longer than `max_message` bytes.
    pub fn new(max_message: usize) -> SyslogFramer {
        SyslogFramer {
            buf: Vec::new(),
            start: 0,
            max_message: max_message.max(1),
            discarding: false,
        }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start >= COMPACT_AT || self.start > self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered and not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    fn skip_separators(&mut self) {
        while let Some(b) = self.buf.get(self.start) {
            if matches!(b, b'\n' | b'\r' | 0) {
                self.start += 1;
            } else {
                break;
            }
        }
    }

    fn header(&self) -> Header {
        let pending = &self.buf[self.start..];
        let digits = pending
            .iter()
            .take(MAX_LEN_DIGITS + 1)
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits == 0 || digits > MAX_LEN_DIGITS {
            return Header::Terminated;
        }
        match pending.get(digits) {
            None => Header::Undecided,
            Some(b' ') => {
                let len = pending[..digits].iter().fold(0usize, |acc, d| {
                    acc.saturating_mul(10).saturating_add(usize::from(d - b'0'))
                });
                Header::Counted {
                    len,
                    header: digits + 1,
                }
            }
            Some(_) => Header::Terminated,
        }
    }

    /// The next complete message, an error for an oversize one, or `None` when more bytes are
    /// needed.
    pub fn next_message(&mut self) -> Option<Result<Vec<u8>, FramingError>> {
        loop {
            if self.discarding {
                match self.buf[self.start..].iter().position(|b| *b == b'\n') {
                    Some(i) => {
                        self.start += i + 1;
                        self.discarding = false;
                    }
                    None => {
                        self.start = self.buf.len();
                        return None;
                    }
                }
            }
            self.skip_separators();
            if self.start == self.buf.len() {
                return None;
            }
            match self.header() {
                Header::Undecided => return None,
                Header::Counted { len, header } => {
                    if len > self.max_message {
                        self.start += header;
                        self.discarding = true;
                        return Some(Err(FramingError::TooLarge {
                            len,
                            max: self.max_message,
                        }));
                    }
                    let body = self.start + header;
                    if self.buf.len() - body < len {
                        return None;
                    }
                    self.start = body + len;
                    if len == 0 {
                        continue;
                    }
                    return Some(Ok(self.buf[body..body + len].to_vec()));
                }
                Header::Terminated => {
                    let pending = &self.buf[self.start..];
                    match pending.iter().position(|b| matches!(b, b'\n' | 0)) {
                        Some(end) => {
                            let message = &pending[..end];
                            let message = message.strip_suffix(b"\r").unwrap_or(message);
                            let result = if message.len() > self.max_message {
                                Err(FramingError::TooLarge {
                                    len: message.len(),
                                    max: self.max_message,
                                })
                            } else {
                                Ok(message.to_vec())
                            };
                            self.start += end + 1;
                            return Some(result);
                        }
                        None if pending.len() > self.max_message => {
                            let len = pending.len();
                            self.start = self.buf.len();
                            self.discarding = true;
                            return Some(Err(FramingError::TooLarge {
                                len,
                                max: self.max_message,
                            }));
                        }
                        None => return None,
                    }
                }
            }
        }
    }

    /// At end of stream: the trailing unterminated message, if any (call after
    /// [`SyslogFramer::next_message`] returned `None`). Leaves the framer empty.
    pub fn finish(&mut self) -> Option<Result<Vec<u8>, FramingError>> {
        let result = if self.discarding {
            None
        } else {
            self.skip_separators();
            let pending = &self.buf[self.start..];
            if pending.is_empty() {
                None
            } else {
                match self.header() {
                    Header::Counted { len, header } => Some(Err(FramingError::Truncated {
                        expected: len,
                        available: pending.len() - header,
                    })),
                    Header::Undecided | Header::Terminated => {
                        let message = pending.strip_suffix(b"\r").unwrap_or(pending);
                        Some(Ok(message.to_vec()))
                    }
                }
            }
        };
        self.buf.clear();
        self.start = 0;
        self.discarding = false;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn drain(framer: &mut SyslogFramer) -> Vec<Result<Vec<u8>, FramingError>> {
        let mut out = Vec::new();
        while let Some(m) = framer.next_message() {
            out.push(m);
        }
        out
    }

    #[test]
    fn mixed_framing_in_one_stream() {
        let mut framer = SyslogFramer::new(1024);
        framer.push(b"<13>first\n17 <13>1 - - - - - -\r\n<13>third\r\n\n\0<13>tail");
        let got: Vec<_> = drain(&mut framer)
            .into_iter()
            .map(|m| m.expect("ok"))
            .collect();
        assert_eq!(got, [&b"<13>first"[..], b"<13>1 - - - - - -", b"<13>third"]);
        assert_eq!(framer.finish(), Some(Ok(b"<13>tail".to_vec())));
        assert_eq!(framer.finish(), None);
    }

    #[test]
    fn octet_counted_message_may_contain_newlines() {
        let mut framer = SyslogFramer::new(1024);
        framer.push(b"21 <13>1 - - - - - - a\nb");
        assert_eq!(drain(&mut framer), [Ok(b"<13>1 - - - - - - a\nb".to_vec())]);
    }

    #[test]
    fn oversize_terminated_message_is_reported_once_then_framing_resyncs() {
        let mut framer = SyslogFramer::new(8);
        framer.push(b"<13>0123456789");
        assert_eq!(
            drain(&mut framer),
            [Err(FramingError::TooLarge { len: 14, max: 8 })]
        );
        framer.push(b"more bytes of the same message\n<13>ok\n");
        assert_eq!(drain(&mut framer), [Ok(b"<13>ok".to_vec())]);
        assert!(framer.buffered() == 0);
    }

    #[test]
    fn oversize_octet_count_is_refused_without_buffering_the_body() {
        let mut framer = SyslogFramer::new(100);
        framer.push(b"4000000000 <13>junk");
        let got = drain(&mut framer);
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].as_ref().map_err(FramingError::reason),
            Err(RejectReason::TooLarge)
        );
        framer.push(b" still junk\n5 <13>x");
        assert_eq!(drain(&mut framer), [Ok(b"<13>x".to_vec())]);
    }

    #[test]
    fn truncated_octet_counted_message_at_eof_is_an_error() {
        let mut framer = SyslogFramer::new(100);
        framer.push(b"30 <13>short");
        assert!(drain(&mut framer).is_empty());
        assert_eq!(
            framer.finish(),
            Some(Err(FramingError::Truncated {
                expected: 30,
                available: 9
            }))
        );
    }

    proptest! {
        #[test]
        fn octet_counted_stream_survives_any_push_boundaries(
            messages in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..200), 1..12),
            cuts in proptest::collection::vec(0usize..4000, 0..20),
        ) {
            let mut stream = Vec::new();
            for m in &messages {
                stream.extend_from_slice(format!("{} ", m.len()).as_bytes());
                stream.extend_from_slice(m);
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            cuts.push(stream.len());
            cuts.sort_unstable();
            let mut framer = SyslogFramer::new(256);
            let mut got = Vec::new();
            let mut from = 0;
            for cut in cuts {
                framer.push(&stream[from..cut]);
                from = cut;
                while let Some(m) = framer.next_message() {
                    got.push(m.expect("valid message"));
                }
            }
            prop_assert_eq!(framer.finish(), None);
            prop_assert_eq!(got, messages);
        }

        #[test]
        fn lf_stream_survives_any_push_boundaries(
            lines in proptest::collection::vec("<1[0-9]>[ -~]{0,60}", 1..12),
            cuts in proptest::collection::vec(0usize..2000, 0..20),
        ) {
            let stream = lines.iter().map(|l| format!("{l}\n")).collect::<String>().into_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            cuts.push(stream.len());
            cuts.sort_unstable();
            let mut framer = SyslogFramer::new(256);
            let mut got = Vec::new();
            let mut from = 0;
            for cut in cuts {
                framer.push(&stream[from..cut]);
                from = cut;
                while let Some(m) = framer.next_message() {
                    got.push(String::from_utf8(m.expect("valid")).expect("utf8"));
                }
            }
            prop_assert_eq!(got, lines);
        }

        #[test]
        fn arbitrary_chunks_never_panic_and_stay_bounded(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..10),
        ) {
            let mut framer = SyslogFramer::new(64);
            for chunk in &chunks {
                framer.push(chunk);
                while let Some(m) = framer.next_message() {
                    if let Ok(m) = m {
                        prop_assert!(m.len() <= 64);
                    }
                }
                prop_assert!(framer.buffered() <= 64 + 12);
            }
            let _ = framer.finish();
        }
    }
}
