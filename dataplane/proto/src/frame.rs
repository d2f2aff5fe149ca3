//! The universal framed batch protocol (docs/protocol.md is the normative description, with
//! test vectors that `tests/protocol_vectors.rs` checks against this code).
//!
//! Request frame (client → server), all integers big-endian:
//! ```text
//! 0   2  magic "LC" (0x4C 0x43)
//! 2   1  version (1)
//! 3   1  format (Format)
//! 4   8  client batch id (0 = no idempotency)
//! 12  4  payload length
//! 16  1  tenant length T (0 = tenant from the entries, else "default")
//! 17  T  tenant, UTF-8
//! …   n  payload
//! ```
//! Ack (server → client), one per request frame, in request order:
//! ```text
//! 0   2  magic "LA" (0x4C 0x41)
//! 2   1  version (1)
//! 3   1  status (AckStatus)
//! 4   8  batch id (echoed)
//! 12  4  accepted entries
//! 16  4  rejected entries
//! 20  1  flags (bit 0: duplicate — the batch id was already stored)
//! 21  2  error length E
//! 23  E  first error, UTF-8
//! ```

pub const FRAME_MAGIC: [u8; 2] = *b"LC";
pub const ACK_MAGIC: [u8; 2] = *b"LA";
pub const VERSION: u8 = 1;
/// Bytes of a request header before the tenant.
pub const FRAME_FIXED_LEN: usize = 17;
/// Bytes of an ack before the error text.
pub const ACK_FIXED_LEN: usize = 23;
/// Longest error text carried by an ack.
pub const MAX_ACK_ERROR_LEN: usize = 1024;

/// Payload format of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// One JSON object, a JSON array of objects, or NDJSON.
    Json = 1,
    /// A protobuf `LogBatch`.
    Protobuf = 2,
    /// An Avro object container file.
    Avro = 3,
    /// Text lines, each auto-detected (JSON / syslog / plain text).
    Raw = 4,
    /// RFC 3164 or RFC 5424 messages, one per line.
    Syslog = 5,
    /// The systemd journal export format.
    Journald = 6,
}

impl Format {
    pub const ALL: [Format; 6] = [
        Format::Json,
        Format::Protobuf,
        Format::Avro,
        Format::Raw,
        Format::Syslog,
        Format::Journald,
    ];

    pub fn from_code(code: u8) -> Option<Format> {
        Format::ALL.into_iter().find(|f| *f as u8 == code)
    }

    /// Lower-case name used in metrics labels and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Protobuf => "protobuf",
            Format::Avro => "avro",
            Format::Raw => "raw",
            Format::Syslog => "syslog",
            Format::Journald => "journald",
        }
    }

    pub fn from_name(name: &str) -> Option<Format> {
        match name {
            "json" | "ndjson" => Some(Format::Json),
            "protobuf" | "proto" => Some(Format::Protobuf),
            "avro" => Some(Format::Avro),
            "raw" => Some(Format::Raw),
            "syslog" => Some(Format::Syslog),
            "journald" => Some(Format::Journald),
            _ => None,
        }
    }
}

/// A parsed request header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub format: Format,
    pub batch_id: u64,
    pub payload_len: u32,
    pub tenant: String,
}

/// Why a frame header could not be read. Every variant means the byte stream can no longer
/// be trusted to be in sync, so the server answers once and closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error(
        "bad magic {0:02x?}: not a LogCluster frame (plaintext on the TLS port, or a desynchronised stream)"
    )]
    BadMagic([u8; 2]),
    #[error("unsupported protocol version {0}")]
    BadVersion(u8),
    #[error("unknown format code {0}")]
    BadFormat(u8),
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge { len: u32, max: u32 },
    #[error("tenant is not valid UTF-8")]
    BadTenant,
}

impl FrameHeader {
    /// Encoded header length (fixed part + tenant).
    pub fn encoded_len(&self) -> usize {
        FRAME_FIXED_LEN + self.tenant.len()
    }

    /// Tries to parse a header from the start of `buf`. `Ok(None)` means more bytes are needed.
    /// `max_payload` is enforced here, before any payload byte is buffered.
    pub fn parse(buf: &[u8], max_payload: u32) -> Result<Option<FrameHeader>, FrameError> {
        if buf.len() >= 2 && buf[0..2] != FRAME_MAGIC {
            return Err(FrameError::BadMagic([buf[0], buf[1]]));
        }
        if buf.len() < FRAME_FIXED_LEN {
            return Ok(None);
        }
        if buf[2] != VERSION {
            return Err(FrameError::BadVersion(buf[2]));
        }
        let format = Format::from_code(buf[3]).ok_or(FrameError::BadFormat(buf[3]))?;
        let batch_id = u64::from_be_bytes(buf[4..12].try_into().expect("8 bytes"));
        let payload_len = u32::from_be_bytes(buf[12..16].try_into().expect("4 bytes"));
        if payload_len > max_payload {
            return Err(FrameError::TooLarge {
                len: payload_len,
                max: max_payload,
            });
        }
        let tenant_len = buf[16] as usize;
        if buf.len() < FRAME_FIXED_LEN + tenant_len {
            return Ok(None);
        }
        let tenant = std::str::from_utf8(&buf[FRAME_FIXED_LEN..FRAME_FIXED_LEN + tenant_len])
            .map_err(|_| FrameError::BadTenant)?
            .to_string();
        Ok(Some(FrameHeader {
            format,
            batch_id,
            payload_len,
            tenant,
        }))
    }

    /// Appends the encoded header to `out`. Tenants longer than 255 bytes are cut at a char
    /// boundary (tenant names are short identifiers in practice).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let mut tenant_end = self.tenant.len().min(255);
        while !self.tenant.is_char_boundary(tenant_end) {
            tenant_end -= 1;
        }
        out.extend_from_slice(&FRAME_MAGIC);
        out.push(VERSION);
        out.push(self.format as u8);
        out.extend_from_slice(&self.batch_id.to_be_bytes());
        out.extend_from_slice(&self.payload_len.to_be_bytes());
        out.push(tenant_end as u8);
        out.extend_from_slice(&self.tenant.as_bytes()[..tenant_end]);
    }
}

/// Encodes a complete request frame.
pub fn encode_frame(format: Format, batch_id: u64, tenant: &str, payload: &[u8]) -> Vec<u8> {
    let header = FrameHeader {
        format,
        batch_id,
        payload_len: payload.len() as u32,
        tenant: tenant.to_string(),
    };
    let mut out = Vec::with_capacity(header.encoded_len() + payload.len());
    header.encode_into(&mut out);
    out.extend_from_slice(payload);
    out
}

/// What the server says about a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckStatus {
    /// Every entry is durable.
    Accepted = 0,
    /// Some entries were rejected; the accepted ones are durable.
    Partial = 1,
    /// No entry was accepted (undecodable payload or every entry invalid). Do not retry as is.
    Rejected = 2,
    /// Nothing was stored (overload or a storage fault); retry the same batch id later.
    RetryLater = 3,
    /// The byte stream is broken (bad magic, version, oversize frame); the server closes the
    /// connection after this ack.
    ProtocolError = 4,
}

impl AckStatus {
    pub fn from_code(code: u8) -> Option<AckStatus> {
        Some(match code {
            0 => AckStatus::Accepted,
            1 => AckStatus::Partial,
            2 => AckStatus::Rejected,
            3 => AckStatus::RetryLater,
            4 => AckStatus::ProtocolError,
            _ => return None,
        })
    }
}

/// The server's answer to one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    pub status: AckStatus,
    pub batch_id: u64,
    pub accepted: u32,
    pub rejected: u32,
    /// The batch id had already been stored; nothing was written again.
    pub duplicate: bool,
    /// The first error, empty when none.
    pub error: String,
}

impl Ack {
    pub fn encode(&self) -> Vec<u8> {
        let mut end = self.error.len().min(MAX_ACK_ERROR_LEN);
        while !self.error.is_char_boundary(end) {
            end -= 1;
        }
        let mut out = Vec::with_capacity(ACK_FIXED_LEN + end);
        out.extend_from_slice(&ACK_MAGIC);
        out.push(VERSION);
        out.push(self.status as u8);
        out.extend_from_slice(&self.batch_id.to_be_bytes());
        out.extend_from_slice(&self.accepted.to_be_bytes());
        out.extend_from_slice(&self.rejected.to_be_bytes());
        out.push(u8::from(self.duplicate));
        out.extend_from_slice(&(end as u16).to_be_bytes());
        out.extend_from_slice(&self.error.as_bytes()[..end]);
        out
    }

    /// Parses an ack from the start of `buf`; returns it and its length, `Ok(None)` when more
    /// bytes are needed.
    pub fn parse(buf: &[u8]) -> Result<Option<(Ack, usize)>, AckParseError> {
        if buf.len() < ACK_FIXED_LEN {
            return Ok(None);
        }
        if buf[0..2] != ACK_MAGIC || buf[2] != VERSION {
            return Err(AckParseError::BadMagic);
        }
        let status = AckStatus::from_code(buf[3]).ok_or(AckParseError::BadStatus(buf[3]))?;
        let error_len = u16::from_be_bytes([buf[21], buf[22]]) as usize;
        if buf.len() < ACK_FIXED_LEN + error_len {
            return Ok(None);
        }
        let error =
            String::from_utf8_lossy(&buf[ACK_FIXED_LEN..ACK_FIXED_LEN + error_len]).into_owned();
        Ok(Some((
            Ack {
                status,
                batch_id: u64::from_be_bytes(buf[4..12].try_into().expect("8 bytes")),
                accepted: u32::from_be_bytes(buf[12..16].try_into().expect("4 bytes")),
                rejected: u32::from_be_bytes(buf[16..20].try_into().expect("4 bytes")),
                duplicate: buf[20] & 1 == 1,
                error,
            },
            ACK_FIXED_LEN + error_len,
        )))
    }
}

/// Why an ack could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckParseError {
    #[error("not a LogCluster ack")]
    BadMagic,
    #[error("unknown ack status {0}")]
    BadStatus(u8),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_needs_all_bytes() {
        let frame = encode_frame(Format::Syslog, 42, "acme", b"hello");
        for cut in 0..frame.len() - 5 {
            assert_eq!(
                FrameHeader::parse(&frame[..cut], 1024),
                Ok(None),
                "cut at {cut}"
            );
        }
        let header = FrameHeader::parse(&frame, 1024)
            .expect("valid")
            .expect("complete");
        assert_eq!(header.format, Format::Syslog);
        assert_eq!(header.batch_id, 42);
        assert_eq!(header.tenant, "acme");
        assert_eq!(&frame[header.encoded_len()..], b"hello");
    }

    #[test]
    fn oversize_and_garbage_are_refused_from_the_header() {
        let frame = encode_frame(Format::Json, 1, "", &[b'x'; 100]);
        assert_eq!(
            FrameHeader::parse(&frame, 99),
            Err(FrameError::TooLarge { len: 100, max: 99 })
        );
        assert!(matches!(
            FrameHeader::parse(b"GET / HTTP/1.1\r\n\r\n", 1024),
            Err(FrameError::BadMagic(_))
        ));
    }

    #[test]
    fn ack_round_trips() {
        let ack = Ack {
            status: AckStatus::Partial,
            batch_id: 7,
            accepted: 9,
            rejected: 1,
            duplicate: false,
            error: "entry 3: missing message".into(),
        };
        let bytes = ack.encode();
        assert_eq!(Ack::parse(&bytes[..bytes.len() - 1]), Ok(None));
        assert_eq!(Ack::parse(&bytes), Ok(Some((ack, bytes.len()))));
    }
}
