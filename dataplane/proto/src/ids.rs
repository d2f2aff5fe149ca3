//! Stable identifiers. `batch_uid` and `entry_id` are persisted (entry ids are stored, batch
//! uids de-duplicate retries across restarts), so their definitions must never change.

/// 64-bit FNV-1a over the tenant, a 0xff separator (never valid UTF-8, so no tenant can
/// imitate it) and the client batch id in big-endian bytes. Seedless and identical on every
/// platform and release.
pub fn batch_uid(tenant: &str, client_batch_id: u64) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |byte: u8| {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    };
    tenant.bytes().for_each(&mut feed);
    feed(0xff);
    client_batch_id
        .to_be_bytes()
        .into_iter()
        .for_each(&mut feed);
    hash
}

/// 64-bit FNV-1a of `bytes`: a stable hash (same on every platform and release) for values
/// that are persisted or compared across processes (request fingerprints, rendezvous choices).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Appends the lower-case hex digits of `bytes` (trace and span ids, ids stored as bytes).
pub fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)]);
        out.push(DIGITS[usize::from(byte & 15)]);
    }
}

/// Fills `out` with the bytes that `digits` (lower-case hex, two per byte of `out`) spell;
/// false (with `out` partly written) when there are not exactly that many or one is not a
/// lower-case hex digit.
pub fn unhex_into(digits: &[u8], out: &mut [u8]) -> bool {
    if digits.len() != 2 * out.len() {
        return false;
    }
    // Each byte's value as a lower-case hex digit, or 0xff.
    const NIBBLE: [u8; 256] = {
        let mut table = [0xffu8; 256];
        let mut d = 0;
        while d < 10 {
            table[b'0' as usize + d] = d as u8;
            d += 1;
        }
        let mut d = 0;
        while d < 6 {
            table[b'a' as usize + d] = 10 + d as u8;
            d += 1;
        }
        table
    };
    let mut bad = 0u8;
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let (high, low) = (NIBBLE[usize::from(pair[0])], NIBBLE[usize::from(pair[1])]);
        bad |= high | low;
        *byte = high << 4 | (low & 15);
    }
    // Every valid nibble is below 16, and 0xff has its high bits set.
    bad < 16
}

/// The lower-case hex digits of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(2 * bytes.len());
    push_hex(&mut out, bytes);
    // Hex digits are ASCII.
    String::from_utf8(out).unwrap_or_default()
}

/// The splitmix64 finalizer: a bijective mix that spreads every input bit over the whole
/// word. Stable across releases (ring placement and Merkle buckets depend on it).
pub fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A `Hasher` for integer keys that mixes them with [`mix64`]: cheaper than SipHash where the
/// keys are not chosen by an attacker to collide (token hashes, interval starts), and unlike a
/// bare multiply it spreads keys whose low bits are all equal (multiples of an interval).
#[derive(Default)]
pub struct Mix64Hasher(u64);

impl std::hash::Hasher for Mix64Hasher {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = mix64(self.0 ^ u64::from(*byte));
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = mix64(self.0 ^ value);
    }

    fn write_i64(&mut self, value: i64) {
        self.write_u64(value as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// `<16 hex digits of batch uid>-<8 hex digits of position>`: ids of one batch sort together,
/// and a retried batch yields identical ids.
pub fn entry_id(batch_uid: u64, index: u32) -> String {
    let mut out = Vec::with_capacity(ENTRY_ID_LEN);
    push_entry_id(&mut out, batch_uid, index);
    // Hex digits and '-' are ASCII.
    String::from_utf8(out).unwrap_or_default()
}

/// The length of every [`entry_id`].
pub const ENTRY_ID_LEN: usize = 25;

/// Appends [`entry_id`]'s text to `out` (many ids in one buffer).
pub fn push_entry_id(out: &mut Vec<u8>, batch_uid: u64, index: u32) {
    push_hex(out, &batch_uid.to_be_bytes());
    out.push(b'-');
    push_hex(out, &index.to_be_bytes());
}

/// The `(batch uid, position)` of an id that [`entry_id`] made, exactly: 16 and 8 lower-case
/// hex digits around a `-` (so that formatting them again gives back the same id).
pub fn parse_entry_id(id: &str) -> Option<(u64, u32)> {
    let bytes = id.as_bytes();
    let mut uid = [0u8; 8];
    let position = parse_entry_position(id)?;
    (bytes[16] == b'-' && unhex_into(&bytes[..16], &mut uid))
        .then(|| (u64::from_be_bytes(uid), position))
}

/// [`parse_entry_id`] of `id`, given the id before it in a column and the uid that one
/// parsed to: ids of one batch share their first 17 bytes (uid and `-`), and then only the
/// position is read.
pub fn parse_entry_id_after(id: &str, previous: Option<(&str, u64)>) -> Option<(u64, u32)> {
    match previous {
        Some((previous, uid))
            if id.len() == 25
                && previous.len() == 25
                && id.as_bytes()[..17] == previous.as_bytes()[..17] =>
        {
            parse_entry_position(id).map(|position| (uid, position))
        }
        _ => parse_entry_id(id),
    }
}

/// The position of an id that [`parse_entry_id`] accepts, read from its last 8 digits only
/// (for an id whose uid part is already known to be valid).
fn parse_entry_position(id: &str) -> Option<u32> {
    let bytes = id.as_bytes();
    let mut index = [0u8; 4];
    (bytes.len() == 25 && unhex_into(&bytes[17..], &mut index)).then(|| u32::from_be_bytes(index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_regression_vectors() {
        // Computed once by this implementation; a change here breaks de-duplication of data
        // already on disk, so these values must never be updated casually.
        // Cross-checked with an independent FNV-1a implementation (Python).
        assert_eq!(batch_uid("", 0), 0x2032_dd64_3620_252e);
        assert_eq!(batch_uid("acme", 42), 0x8711_2cc5_44ed_066e);
        assert_eq!(entry_id(0xab, 3), "00000000000000ab-00000003");
        assert_ne!(batch_uid("acme", 1), batch_uid("acme", 2));
        assert_ne!(batch_uid("acme", 1), batch_uid("acm", 1));
        assert_eq!(batch_uid("acme", 42), batch_uid("acme", 42));
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0x00, 0xab, 0x7f]), "00ab7f");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn unhex_reads_back_what_hex_wrote_and_nothing_else() {
        let mut out = [0u8; 3];
        assert!(unhex_into(b"00ab7f", &mut out));
        assert_eq!(hex(&out), "00ab7f");
        for bad in [&b"00AB7F"[..], b"00ab7", b"00ab7f00", b"00ab7g", b"0 ab7f"] {
            assert!(!unhex_into(bad, &mut out), "{bad:?}");
        }
        assert!(unhex_into(b"", &mut []));
    }

    proptest::proptest! {
        /// Against the definitions: `format!`'s hex, and a digit-by-digit reading.
        #[test]
        fn ids_and_hex_match_their_definitions(
            uid in proptest::prelude::any::<u64>(),
            index in proptest::prelude::any::<u32>(),
            digits in proptest::collection::vec(
                proptest::sample::select(b"0123456789abcdefABCDEFg-x \xff".to_vec()), 0..12),
        ) {
            let id = entry_id(uid, index);
            proptest::prop_assert_eq!(&id, &format!("{uid:016x}-{index:08x}"));
            proptest::prop_assert_eq!(parse_entry_id(&id), Some((uid, index)));
            proptest::prop_assert_eq!(parse_entry_position(&id), Some(index));
            // After an id of the same batch, or of another one, or after none.
            let same = entry_id(uid, index.wrapping_add(7));
            let other = entry_id(uid ^ 1, index);
            for previous in [Some((same.as_str(), uid)), Some((other.as_str(), uid ^ 1)), None] {
                proptest::prop_assert_eq!(parse_entry_id_after(&id, previous), Some((uid, index)));
            }
            let mut out = vec![0u8; digits.len() / 2];
            let expected = (digits.len() % 2 == 0
                && digits.iter().all(|d| matches!(d, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| {
                digits
                    .chunks(2)
                    .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap_or("x"), 16).unwrap_or(0))
                    .collect::<Vec<u8>>()
            });
            let got = unhex_into(&digits, &mut out).then_some(out);
            proptest::prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn entry_ids_parse_back_exactly() {
        assert_eq!(parse_entry_id(&entry_id(0xab, 3)), Some((0xab, 3)));
        assert_eq!(
            parse_entry_id(&entry_id(u64::MAX, u32::MAX)),
            Some((u64::MAX, u32::MAX))
        );
        for other in [
            "00000000000000AB-00000003",
            "00000000000000ab-0000003",
            "00000000000000ab_00000003",
            "request-1",
            "",
        ] {
            assert_eq!(parse_entry_id(other), None, "{other}");
        }
    }
}
