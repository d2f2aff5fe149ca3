//! logcluster-ingest
