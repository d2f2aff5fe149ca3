//! Shared by every role: TLS, certificates, metrics helpers, shutdown.
