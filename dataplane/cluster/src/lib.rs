//! The cluster layer of LogCluster: who the storage members are ([`membership`]), which of
//! them own a stream ([`ring`]), and how replicas compare what they hold ([`merkle`]).
//!
//! This crate owns the *pure* cluster logic plus discovery from static lists and files. It
//! must not know about log formats or the on-disk layout: storage and ingest depend on it,
//! never the other way round. See `replication.md` beside this file for the design.

pub mod membership;
pub mod merkle;
pub mod ring;

pub use membership::{Member, MemberList};
pub use ring::{PartitionId, Ring};
pub mod antientropy;
pub mod hints;
pub mod messages;
pub mod replication;
pub mod rpc;
pub mod server;
