//! logcluster-schema
