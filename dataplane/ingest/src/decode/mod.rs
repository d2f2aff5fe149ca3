//! Decoders from every input format to LogEntry.
