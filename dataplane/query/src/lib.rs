//! Query: the query language, fan-out, merge and the HTTP API.

pub mod agg;
pub mod alerts;
pub mod api;
pub mod endpoints;
pub mod fanout;
pub mod lang;
pub use logcluster_storage::sketch;

/// The dashboard (one self-contained page: styles, scripts and charts inline, no external
/// requests), served at `/` by the query role.
pub const DASHBOARD_HTML: &str = include_str!("dashboard/index.html");
