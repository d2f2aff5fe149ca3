//! Wire types and codecs: the only crate whose types cross the network or reach the disk.
//!
//! Owns [`LogEntry`] (protobuf via prost, a canonical JSON form, an Avro schema), the framed
//! batch protocol of the universal TLS port ([`frame`]), the stable ids ([`ids`]) and time helpers. It must not do I/O:
//! every function here is a pure transformation of bytes or values, so that clients, servers
//! and the storage engine share exactly one definition of every byte.

pub mod avro;
pub mod entry;
pub mod frame;
pub mod ids;
pub mod json;
pub mod time;
pub mod tokens;
pub mod view;
pub mod wire;

pub use entry::{FieldValue, Level, LogBatch, LogEntry, field_value};
pub use frame::{Ack, AckStatus, Format, FrameError, FrameHeader};
pub use view::{EntryRef, FieldRef};
