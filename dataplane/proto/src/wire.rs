//! Reading encoded protobuf messages field by field, without decoding them: for the paths
//! that need one or two fields of many messages (record filters) or where each nested
//! message lies (forwarding received bytes instead of encoding them again).

use std::ops::Range;

use prost::encoding::{WireType, decode_key, decode_varint};

/// Appends a length-delimited field `tag` whose contents are `body` (already encoded: a
/// nested message's bytes forwarded as they are), as prost writes such a field.
pub fn put_delimited(tag: u32, body: &[u8], out: &mut Vec<u8>) {
    put_key(tag, WireType::LengthDelimited, out);
    put_varint(body.len() as u64, out);
    out.extend_from_slice(body);
}

/// Writes a field key as prost's `encode_key` does.
#[inline]
pub fn put_key(tag: u32, wire_type: WireType, out: &mut Vec<u8>) {
    put_varint(u64::from(tag << 3 | wire_type as u32), out);
}

/// Writes a varint as prost's `encode_varint` does, a one-byte varint (most keys, lengths
/// and small values) without a loop.
#[inline]
pub fn put_varint(mut value: u64, out: &mut Vec<u8>) {
    if value < 0x80 {
        out.push(value as u8);
        return;
    }
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads a varint as prost's `decode_varint` does (`None` where it fails), a one-byte
/// varint without a call: keys, lengths and small values nearly always fit in one byte.
#[inline]
pub fn read_varint(rest: &mut &[u8]) -> Option<u64> {
    match rest.first() {
        Some(&byte) if byte < 0x80 => {
            *rest = &rest[1..];
            Some(u64::from(byte))
        }
        _ => decode_varint(rest).ok(),
    }
}

/// Reads a field key as prost's `decode_key` does (`None` where it fails), a one-byte key
/// without a call.
#[inline]
pub fn read_key(rest: &mut &[u8]) -> Option<(u32, WireType)> {
    match rest.first() {
        Some(&byte) if byte < 0x80 => {
            let tag = u32::from(byte >> 3);
            let wire_type = WireType::try_from(u64::from(byte & 7)).ok()?;
            if tag == 0 {
                return None;
            }
            *rest = &rest[1..];
            Some((tag, wire_type))
        }
        _ => decode_key(rest).ok(),
    }
}

/// The value of one top-level field, as [`walk_fields`] meets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawField {
    Varint(u64),
    /// A length-delimited field (string, bytes, nested message, packed repeated field):
    /// where its contents lie in the walked message.
    Delimited(Range<usize>),
    /// A 32- or 64-bit fixed-width field, not read.
    Fixed,
}

/// Calls `f` with the tag and value of each top-level field of the encoded `message`, in
/// order. `None` when the bytes are not a well-formed message (a truncated field, a bad
/// varint, a group: prost's decoding of the message fails on these too); `f` may have seen
/// the fields before the fault.
pub fn walk_fields(message: &[u8], mut f: impl FnMut(u32, RawField)) -> Option<()> {
    let mut rest = message;
    while !rest.is_empty() {
        let (tag, wire_type) = read_key(&mut rest)?;
        let field = match wire_type {
            WireType::Varint => RawField::Varint(read_varint(&mut rest)?),
            WireType::SixtyFourBit => {
                rest = rest.get(8..)?;
                RawField::Fixed
            }
            WireType::ThirtyTwoBit => {
                rest = rest.get(4..)?;
                RawField::Fixed
            }
            WireType::LengthDelimited => {
                let len = usize::try_from(read_varint(&mut rest)?).ok()?;
                let start = message.len() - rest.len();
                rest = rest.get(len..)?;
                RawField::Delimited(start..start + len)
            }
            WireType::StartGroup | WireType::EndGroup => return None,
        };
        f(tag, field);
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FieldValue, LogBatch, LogEntry};
    use prost::Message;

    /// `ours` reads from `bytes` what `theirs` (prost's reader) reads, and when it reads
    /// something, leaves the same rest.
    fn reads_as_prost<T: PartialEq + std::fmt::Debug>(
        bytes: &[u8],
        ours: fn(&mut &[u8]) -> Option<T>,
        theirs: fn(&mut &[u8]) -> Result<T, prost::DecodeError>,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        let (mut our_rest, mut their_rest) = (bytes, bytes);
        let read = ours(&mut our_rest);
        let expected = theirs(&mut their_rest).ok();
        proptest::prop_assert_eq!(&read, &expected);
        if read.is_some() {
            proptest::prop_assert_eq!(our_rest, their_rest);
        }
        Ok(())
    }

    proptest::proptest! {
        /// Keys and varints read as prost reads them, leaving the same rest.
        #[test]
        fn keys_and_varints_read_as_prost_reads_them(
            bytes in proptest::collection::vec(
                proptest::prop_oneof![proptest::prelude::any::<u8>(), 0u8..0x80, 0x80u8..=0xff],
                0..12,
            ),
        ) {
            reads_as_prost(&bytes, read_key, |rest| decode_key(rest))?;
            reads_as_prost(&bytes, read_varint, |rest| decode_varint(rest))?;
        }
    }

    #[test]
    fn fields_are_walked_in_order_with_their_places() {
        let entry = LogEntry {
            timestamp: 1_714_572_000_123_000_000,
            level: 5,
            message: "charge failed".into(),
            fields: [("status".to_string(), FieldValue::int(502))].into(),
            ..Default::default()
        };
        let bytes = entry.encode_to_vec();
        let mut seen = Vec::new();
        assert_eq!(
            walk_fields(&bytes, |tag, field| seen.push((tag, field))),
            Some(())
        );
        let tags: Vec<u32> = seen.iter().map(|(tag, _)| *tag).collect();
        assert_eq!(tags, [2, 6, 7, 10]);
        assert_eq!(seen[0].1, RawField::Varint(1_714_572_000_123_000_000));
        assert_eq!(seen[1].1, RawField::Varint(5));
        let RawField::Delimited(message) = seen[2].1.clone() else {
            panic!("the message is length-delimited: {seen:?}");
        };
        assert_eq!(&bytes[message], b"charge failed");

        // Nested messages: each entry of a batch decodes from its range.
        let batch = LogBatch {
            entries: vec![entry.clone(), LogEntry::default(), entry.clone()],
        };
        let bytes = batch.encode_to_vec();
        let mut entries = Vec::new();
        walk_fields(&bytes, |tag, field| {
            if let (1, RawField::Delimited(range)) = (tag, field) {
                entries.push(LogEntry::decode(&bytes[range]).expect("an entry"));
            }
        })
        .expect("well formed");
        assert_eq!(entries, batch.entries);
    }

    #[test]
    fn malformed_messages_are_refused_as_prost_refuses_them() {
        let bytes = LogEntry {
            message: "abc".into(),
            timestamp: 7,
            ..Default::default()
        }
        .encode_to_vec();
        for cut in 1..bytes.len() {
            let walked = walk_fields(&bytes[..cut], |_, _| {});
            assert_eq!(
                walked.is_some(),
                LogEntry::decode(&bytes[..cut]).is_ok(),
                "{cut}"
            );
        }
        // A group (wire type 3), a bad wire type (7), a fixed field cut short.
        for bad in [&[0x0b][..], &[0x0f], &[0x09, 1, 2]] {
            assert_eq!(walk_fields(bad, |_, _| {}), None, "{bad:?}");
        }
        assert_eq!(walk_fields(&[], |_, _| panic!("no fields")), Some(()));
    }
}
