//! Shared by every role: TLS, certificates, metrics helpers, shutdown, stable ids.
//!
//! Nothing here knows about logs; it is the plumbing every node and client needs the same way.

pub mod certs;
pub mod http_client;
pub mod ids;
pub mod io;
pub mod metrics;
pub mod shutdown;
pub mod tls;
