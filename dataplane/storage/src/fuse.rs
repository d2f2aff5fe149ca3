//! The token filter of [`FORMAT_TEMPLATES`] blocks: a binary fuse filter (after Graf and
//! Lemire, "Binary Fuse Filters: Fast and Smaller Than Xor Filters", 2022) with 8-bit
//! fingerprints. It answers like the Bloom filter of older blocks ("maybe" or "certainly
//! not") with a false-positive rate near 0.4 % in 9 to 11 bits per distinct token (fewer
//! for larger sets), where the Bloom filter took 12 bits for about 0.6 %.
//!
//! Each key (a token hash) maps to three slots, one in each of three consecutive segments
//! of the fingerprint array; the filter holds the key when the XOR of those slots equals
//! the key's fingerprint. Building peels keys off slots that only one key maps to, then
//! assigns the fingerprints in reverse order.
//!
//! ```text
//! u64 LE seed, u32 LE segment length (a power of two), u32 LE segment count × length,
//! fingerprints (segment count + 2) × length bytes
//! ```
//!
//! [`FORMAT_TEMPLATES`]: crate::segment::FORMAT_TEMPLATES

const HEADER: usize = 16;
/// Sets with fewer keys keep the Bloom filter: below about two thousand keys the fuse layout
/// (two extra segments, a larger size factor) takes more bytes than it.
pub const MIN_KEYS: usize = 2048;
const MAX_SEGMENT_LENGTH: u32 = 1 << 18;
const ATTEMPTS: u64 = 32;

/// A key mixed with a seed over all bits (bijective for a given seed, so distinct keys stay
/// distinct).
fn mix(key: u64, seed: u64) -> u64 {
    logcluster_proto::ids::mix64(key.wrapping_add(seed))
}

fn fingerprint(hash: u64) -> u8 {
    (hash ^ (hash >> 32)) as u8
}

/// The three slots of a mixed key.
fn slots(hash: u64, segment_length: u32, segment_count_length: u32) -> [usize; 3] {
    let mask = u64::from(segment_length - 1);
    let h0 = ((u128::from(hash) * u128::from(segment_count_length)) >> 64) as u64;
    let h1 = (h0 + u64::from(segment_length)) ^ ((hash >> 18) & mask);
    let h2 = (h0 + 2 * u64::from(segment_length)) ^ (hash & mask);
    [h0 as usize, h1 as usize, h2 as usize]
}

/// Builds a filter over distinct `keys`; `None` when there are too few of them (or, very
/// rarely, when no seed lets the keys be peeled), and the caller keeps a Bloom filter.
pub fn build(keys: &[u64]) -> Option<Vec<u8>> {
    let n = keys.len();
    if n < MIN_KEYS || n > u32::MAX as usize / 4 {
        return None;
    }
    let segment_length =
        (1u32 << ((n as f64).ln() / 3.33f64.ln() + 2.25).floor() as u32).min(MAX_SEGMENT_LENGTH);
    let size_factor = (0.875 + 0.25 * (1e6f64).ln() / (n as f64).ln()).max(1.125);
    let capacity = (n as f64 * size_factor).round() as u64;
    let segment_count = capacity
        .div_ceil(u64::from(segment_length))
        .saturating_sub(2)
        .max(1);
    let mut count = Vec::new();
    let mut xored = Vec::new();
    let mut queue = Vec::new();
    let mut peeled: Vec<(u64, usize)> = Vec::with_capacity(n);
    for attempt in 0..ATTEMPTS {
        // Small sets fail to peel more often: every few failed seeds, one segment more.
        let segment_count = segment_count + attempt / 4;
        let segment_count_length = u32::try_from(segment_count * u64::from(segment_length)).ok()?;
        let array_length = segment_count_length as usize + 2 * segment_length as usize;
        let seed = mix(attempt, 0x9e37_79b9_7f4a_7c15);
        count.clear();
        count.resize(array_length, 0u8);
        xored.clear();
        xored.resize(array_length, 0u64);
        let mut overflow = false;
        for key in keys {
            let hash = mix(*key, seed);
            for slot in slots(hash, segment_length, segment_count_length) {
                count[slot] = match count[slot].checked_add(1) {
                    Some(c) => c,
                    None => {
                        overflow = true;
                        255
                    }
                };
                xored[slot] ^= hash;
            }
        }
        if overflow {
            continue;
        }
        queue.clear();
        queue.extend((0..array_length).filter(|s| count[*s] == 1));
        peeled.clear();
        while let Some(slot) = queue.pop() {
            if count[slot] != 1 {
                continue;
            }
            let hash = xored[slot];
            peeled.push((hash, slot));
            for other in slots(hash, segment_length, segment_count_length) {
                count[other] -= 1;
                xored[other] ^= hash;
                if count[other] == 1 {
                    queue.push(other);
                }
            }
        }
        if peeled.len() != n {
            continue;
        }
        let mut filter = vec![0u8; HEADER + array_length];
        filter[..8].copy_from_slice(&seed.to_le_bytes());
        filter[8..12].copy_from_slice(&segment_length.to_le_bytes());
        filter[12..16].copy_from_slice(&segment_count_length.to_le_bytes());
        let fingerprints = &mut filter[HEADER..];
        for (hash, slot) in peeled.iter().rev() {
            let [a, b, c] = slots(*hash, segment_length, segment_count_length);
            fingerprints[*slot] = 0;
            fingerprints[*slot] =
                fingerprint(*hash) ^ fingerprints[a] ^ fingerprints[b] ^ fingerprints[c];
        }
        return Some(filter);
    }
    None
}

/// Whether the set may hold `key`; a malformed filter answers "maybe".
pub fn may_contain(filter: &[u8], key: u64) -> bool {
    let Some((header, fingerprints)) = filter.split_at_checked(HEADER) else {
        return true;
    };
    let seed = u64::from_le_bytes(header[..8].try_into().unwrap_or_default());
    let segment_length = u32::from_le_bytes(header[8..12].try_into().unwrap_or_default());
    let segment_count_length = u32::from_le_bytes(header[12..16].try_into().unwrap_or_default());
    if !segment_length.is_power_of_two()
        || segment_count_length == 0
        || !segment_count_length.is_multiple_of(segment_length)
        || fingerprints.len() != segment_count_length as usize + 2 * segment_length as usize
    {
        return true;
    }
    let hash = mix(key, seed);
    let [a, b, c] = slots(hash, segment_length, segment_count_length);
    fingerprint(hash) ^ fingerprints[a] ^ fingerprints[b] ^ fingerprints[c] == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` distinct keys; different salts give disjoint sets.
    fn keys(n: u64, salt: u64) -> Vec<u64> {
        (0..n).map(|i| mix(i + (salt << 40), 0)).collect()
    }

    #[test]
    fn every_key_is_found_and_others_rarely() {
        for n in [2_048u64, 2_049, 3_000, 7_000, 50_000] {
            let set = keys(n, 1);
            let filter = build(&set).expect("filter");
            assert!(set.iter().all(|k| may_contain(&filter, *k)), "n={n}");
            let others = keys(100_000, 2);
            let false_positives = others.iter().filter(|k| may_contain(&filter, **k)).count();
            // 8-bit fingerprints: 1/256 ≈ 0.39 %.
            assert!(false_positives < 700, "n={n}: {false_positives} of 100000");
            // Smaller than the 12 bits per key of the Bloom filter, more so for larger sets.
            let bits_per_key = (filter.len() * 8) as f64 / n as f64;
            let most = if n >= 50_000 { 10.0 } else { 12.0 };
            assert!(bits_per_key < most, "n={n}: {bits_per_key} bits per key");
        }
    }

    #[test]
    fn small_sets_and_damaged_filters() {
        assert_eq!(build(&keys(2_047, 1)), None);
        assert!(may_contain(&[], 7));
        assert!(may_contain(&[1, 2, 3], 7));
        let mut filter = build(&keys(3_000, 1)).expect("filter");
        filter[8] = 3; // not a power of two
        assert!(may_contain(&filter, 7));
        // Segment sizes that do not fit the fingerprints they claim.
        let empty = [0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!((0..1_000).all(|k| may_contain(&empty, k)));
        let mut uneven = vec![0u8; HEADER + 13];
        uneven[8] = 4;
        uneven[12] = 5;
        assert!((0..1_000).all(|k| may_contain(&uneven, k)));
        filter.truncate(HEADER + 5);
        assert!(may_contain(&filter, 7));
    }

    proptest::proptest! {
        #[test]
        fn no_false_negatives(set in proptest::collection::hash_set(proptest::prelude::any::<u64>(), 2_048..4_000)) {
            let set: Vec<u64> = set.into_iter().collect();
            let filter = build(&set).expect("filter");
            proptest::prop_assert!(set.iter().all(|k| may_contain(&filter, *k)));
        }
    }
}
