//! logcluster-config
