//! Shared by every role: TLS, certificates, metrics helpers, shutdown, stable ids.
//!
//! Nothing here knows about logs; it is the plumbing every node and client needs the same way.

pub mod certs;
pub mod durable;
pub mod http_client;
pub mod ids;
pub mod io;
pub mod metrics;
pub mod shutdown;
pub mod tls;

/// `error` and its sources, `outer: inner: innermost` (an I/O error's own text, such as "Too
/// many open files", is often only in a source).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}
