//! logcluster-testkit
