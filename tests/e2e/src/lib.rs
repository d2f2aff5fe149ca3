//! End-to-end tests live in tests/; see README.md.
