//! The per-block token filter: a small Bloom filter over the tokens of an entry's message,
//! host, trace id and string fields (tokens from `logcluster_proto::tokens`).
//!
//! It only ever answers "maybe" or "certainly not", so a query can skip a block that cannot
//! contain a required token without reading or decompressing it.

/// FNV-1a 64: stable across platforms and releases, which matters because filters are
/// persisted in segment indexes.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

const HASHES: u64 = 4;
const BITS_PER_KEY: usize = 8;

/// Builds a filter from a set of distinct token hashes.
pub fn build(token_hashes: &[u64]) -> Vec<u8> {
    let bits = (token_hashes.len() * BITS_PER_KEY).clamp(64, 1 << 24);
    let mut filter = vec![0u8; bits.div_ceil(8)];
    let nbits = (filter.len() * 8) as u64;
    for hash in token_hashes {
        let (h1, h2) = (*hash, hash.rotate_left(32) | 1);
        for i in 0..HASHES {
            let bit = h1.wrapping_add(i.wrapping_mul(h2)) % nbits;
            filter[(bit / 8) as usize] |= 1 << (bit % 8);
        }
    }
    filter
}

/// Whether the filter may contain the token with this hash. An empty filter (an index written
/// without one) answers "maybe".
pub fn may_contain(filter: &[u8], hash: u64) -> bool {
    if filter.is_empty() {
        return true;
    }
    let nbits = (filter.len() * 8) as u64;
    let (h1, h2) = (hash, hash.rotate_left(32) | 1);
    (0..HASHES).all(|i| {
        let bit = h1.wrapping_add(i.wrapping_mul(h2)) % nbits;
        filter[(bit / 8) as usize] & (1 << (bit % 8)) != 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_inserted_token_is_found_and_most_others_are_not() {
        let keys: Vec<u64> = (0..5000)
            .map(|i| fnv1a64(format!("tok{i}").as_bytes()))
            .collect();
        let filter = build(&keys);
        assert!(keys.iter().all(|k| may_contain(&filter, *k)));
        let false_positives = (0..10_000)
            .filter(|i| may_contain(&filter, fnv1a64(format!("other{i}").as_bytes())))
            .count();
        assert!(
            false_positives < 600,
            "false positive rate too high: {false_positives}/10000"
        );
    }
}
