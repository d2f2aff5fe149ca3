//! The per-block token filter: a small Bloom filter over the tokens of an entry's message,
//! host, trace id and string fields (tokens from `logcluster_proto::tokens`).
//!
//! It only ever answers "maybe" or "certainly not", so a query can skip a block that cannot
//! contain a required token without reading or decompressing it.

/// The token hash of the filters (FNV-1a, fixed by the filters on disk).
pub use logcluster_proto::ids::fnv1a64;

/// Probes per key. Fixed for good: filters already on disk were built with it, and a reader
/// probing more positions than the writer set would answer "certainly not" wrongly.
const HASHES: u64 = 4;
/// Filter size per distinct token; readers take the size from the filter's length, so it can
/// change freely. 12 bits with 4 probes gives about 0.6 % false positives (8 bits gave about
/// 2.4 %, which let ~2 % of blocks through for an absent trace id) for about 2 % more stored
/// bytes.
const BITS_PER_KEY: usize = 12;

/// Builds a filter from a set of distinct token hashes.
pub fn build(token_hashes: &[u64]) -> Vec<u8> {
    build_sized(token_hashes, BITS_PER_KEY)
}

fn build_sized(token_hashes: &[u64], bits_per_key: usize) -> Vec<u8> {
    let bits = (token_hashes.len() * bits_per_key).clamp(64, 1 << 24);
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
    fn filters_written_at_other_sizes_still_answer_correctly() {
        // Segments written before BITS_PER_KEY changed hold 8-bit-per-key filters.
        let keys: Vec<u64> = (0..3000)
            .map(|i| fnv1a64(format!("old{i}").as_bytes()))
            .collect();
        for bits_per_key in [8, 12, 16] {
            let filter = build_sized(&keys, bits_per_key);
            assert_eq!(filter.len(), (3000 * bits_per_key).div_ceil(8));
            assert!(keys.iter().all(|k| may_contain(&filter, *k)));
        }
    }

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
            false_positives < 200,
            "false positive rate too high: {false_positives}/10000"
        );
    }
}
