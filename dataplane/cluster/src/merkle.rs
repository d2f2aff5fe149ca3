//! Merkle trees over (partition, time bucket) digests, for anti-entropy.
//!
//! A replica summarises what it holds as one [`Digest`] per key — a (partition, time bucket)
//! pair — made of the entry count and the wrapping sum of the entries' id hashes. Sums make a
//! digest independent of arrival order and cheap to update on append. Keys fall into
//! `2^depth` leaf slots by hash; inner nodes hash their two children. Two replicas compare
//! roots, descend only where nodes differ, and end with the exact keys whose digests differ;
//! only those keys' id lists are exchanged. With 1024 slots a clean comparison costs one
//! root, a dirty one `O(differences × depth)` nodes.
//!
//! Must not: read storage. Callers feed digests in; this module only compares.

use std::collections::BTreeMap;

use logcluster_proto::ids::mix64;

use serde::{Deserialize, Serialize};

/// What a replica holds for one key: entry count and the wrapping sum of id hashes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub count: u64,
    pub sum: u64,
}

impl Digest {
    /// Adds another digest (the union of two disjoint sets).
    pub fn merge(&mut self, other: &Digest) {
        self.count += other.count;
        self.sum = self.sum.wrapping_add(other.sum);
    }

    /// Adds one entry id.
    pub fn add(&mut self, entry_id: &str) {
        self.count += 1;
        self.sum = self.sum.wrapping_add(id_hash(entry_id));
    }

    fn node_hash(&self) -> u64 {
        mix64(self.count.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ self.sum)
    }
}

/// A (partition, time bucket) key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Key {
    pub partition: u32,
    /// Start of the time bucket, in the entry-timestamp unit divided by the bucket width.
    pub bucket: i64,
}

/// Stable hash of an entry id (FNV-1a, finalised).
pub fn id_hash(entry_id: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in entry_id.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(hash)
}

fn slot_of(key: &Key, depth: u32) -> usize {
    let h = mix64(u64::from(key.partition) ^ mix64(key.bucket as u64));
    (h >> (64 - depth)) as usize
}

/// A Merkle tree over key digests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerkleTree {
    depth: u32,
    /// Heap layout: node 1 is the root, node i has children 2i and 2i+1; leaves are
    /// `2^depth .. 2^(depth+1)`. Index 0 is unused.
    nodes: Vec<u64>,
    /// The digests behind each leaf slot.
    keys: BTreeMap<Key, Digest>,
}

impl MerkleTree {
    /// Builds a tree with `2^depth` leaf slots (depth 1..=20).
    pub fn build(depth: u32, digests: impl IntoIterator<Item = (Key, Digest)>) -> MerkleTree {
        let depth = depth.clamp(1, 20);
        let leaves = 1usize << depth;
        let mut nodes = vec![0u64; 2 * leaves];
        let mut keys = BTreeMap::new();
        for (key, digest) in digests {
            if digest.count == 0 {
                continue;
            }
            let slot = slot_of(&key, depth);
            nodes[leaves + slot] = nodes[leaves + slot]
                .wrapping_add(mix64(digest.node_hash() ^ mix64(slot_key(&key))));
            keys.insert(key, digest);
        }
        for i in (1..leaves).rev() {
            nodes[i] = mix64(nodes[2 * i].rotate_left(17) ^ nodes[2 * i + 1]);
        }
        MerkleTree { depth, nodes, keys }
    }

    pub fn root(&self) -> u64 {
        self.nodes[1]
    }

    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// Node hashes at `level` (0 = root), left to right: what one side sends the other.
    pub fn level(&self, level: u32) -> &[u64] {
        let level = level.min(self.depth);
        &self.nodes[1 << level..1 << (level + 1)]
    }

    /// Leaf slots whose hashes differ from `other` (same depth), found by descending only
    /// into differing subtrees.
    pub fn differing_slots(&self, other: &MerkleTree) -> Vec<usize> {
        let mut out = Vec::new();
        if self.depth != other.depth {
            return (0..1usize << self.depth).collect();
        }
        let leaves = 1usize << self.depth;
        let mut stack = vec![1usize];
        while let Some(node) = stack.pop() {
            if self.nodes[node] == other.nodes[node] {
                continue;
            }
            if node >= leaves {
                out.push(node - leaves);
            } else {
                stack.push(2 * node + 1);
                stack.push(2 * node);
            }
        }
        out.sort_unstable();
        out
    }

    /// The digests of the keys in the given leaf slots.
    pub fn keys_in_slots(&self, slots: &[usize]) -> BTreeMap<Key, Digest> {
        self.keys
            .iter()
            .filter(|(key, _)| slots.binary_search(&slot_of(key, self.depth)).is_ok())
            .map(|(k, d)| (*k, *d))
            .collect()
    }

    /// The keys whose digests differ between the two trees: the end result of a comparison.
    pub fn diff(&self, other: &MerkleTree) -> Vec<Key> {
        let slots = self.differing_slots(other);
        let mine = self.keys_in_slots(&slots);
        let theirs = other.keys_in_slots(&slots);
        diff_digests(&mine, &theirs)
    }
}

/// Keys whose digests differ between two digest maps (a missing key counts as empty).
pub fn diff_digests(a: &BTreeMap<Key, Digest>, b: &BTreeMap<Key, Digest>) -> Vec<Key> {
    let mut keys: Vec<Key> = a
        .iter()
        .filter(|(k, d)| b.get(k) != Some(d))
        .map(|(k, _)| *k)
        .chain(b.keys().filter(|k| !a.contains_key(k)).copied())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

fn slot_key(key: &Key) -> u64 {
    (u64::from(key.partition) << 40) ^ (key.bucket as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn digests(entries: &BTreeSet<(u32, i64, u32)>) -> BTreeMap<Key, Digest> {
        let mut map: BTreeMap<Key, Digest> = BTreeMap::new();
        for (partition, bucket, id) in entries {
            map.entry(Key {
                partition: *partition,
                bucket: *bucket,
            })
            .or_default()
            .add(&format!("{id:08x}"));
        }
        map
    }

    #[test]
    fn identical_replicas_compare_equal_at_the_root() {
        let set: BTreeSet<(u32, i64, u32)> =
            (0..500).map(|i| (i % 7, i64::from(i % 24), i)).collect();
        let a = MerkleTree::build(10, digests(&set));
        let b = MerkleTree::build(10, digests(&set));
        assert_eq!(a.root(), b.root());
        assert!(a.diff(&b).is_empty());
        assert_eq!(a.level(3).len(), 8);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn diff_finds_exactly_the_buckets_that_differ(
            common in prop::collection::btree_set((0u32..50, 0i64..48, any::<u32>()), 0..400),
            only_a in prop::collection::btree_set((0u32..50, 0i64..48, any::<u32>()), 0..20),
            only_b in prop::collection::btree_set((0u32..50, 0i64..48, any::<u32>()), 0..20),
            depth in 1u32..=12,
        ) {
            let a_set: BTreeSet<_> = common.union(&only_a).copied().collect();
            let b_set: BTreeSet<_> = common.union(&only_b).copied().collect();
            let a = digests(&a_set);
            let b = digests(&b_set);
            // Ground truth: the keys whose id sets differ.
            let ids = |set: &BTreeSet<(u32, i64, u32)>, key: &Key| -> BTreeSet<u32> {
                set.iter().filter(|(p, t, _)| *p == key.partition && *t == key.bucket).map(|e| e.2).collect()
            };
            let all_keys: BTreeSet<Key> = a.keys().chain(b.keys()).copied().collect();
            let expected: Vec<Key> = all_keys.into_iter().filter(|k| ids(&a_set, k) != ids(&b_set, k)).collect();
            let tree_a = MerkleTree::build(depth, a.clone());
            let tree_b = MerkleTree::build(depth, b.clone());
            prop_assert_eq!(tree_a.diff(&tree_b), expected.clone());
            prop_assert_eq!(tree_b.diff(&tree_a), expected.clone());
            prop_assert_eq!(tree_a.root() == tree_b.root(), expected.is_empty());
        }
    }
}
