//! Stable identifiers (defined in `logcluster_proto::ids`, where storage can use them too),
//! and random batch uids.

pub use logcluster_proto::ids::*;

/// A random non-zero u64 (batch uids of batches sent without a client batch id).
pub fn random_u64() -> u64 {
    loop {
        let value: u64 = rand::random();
        if value != 0 {
            return value;
        }
    }
}
