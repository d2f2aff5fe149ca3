//! logcluster-common
