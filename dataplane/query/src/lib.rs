//! Query: the query language, fan-out, merge and the HTTP API.

pub mod api;
pub mod fanout;
pub mod lang;
