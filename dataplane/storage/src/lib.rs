//! logcluster-storage
