//! Query: the query language, fan-out, merge and the HTTP API.

pub mod lang;
