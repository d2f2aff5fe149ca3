//! The Avro form of a [`crate::LogEntry`] (schema `LOG_ENTRY_SCHEMA`) and the object container
//! file codec used by `avro` frames.
