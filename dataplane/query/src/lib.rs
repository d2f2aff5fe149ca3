//! logcluster-query
