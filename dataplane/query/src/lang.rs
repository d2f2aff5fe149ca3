//! The LogCluster query language: parsing, canonical printing, exact matching and block
//! pruning hints.
//!
//! This module owns the query *string* only. It does no I/O and knows nothing about storage
//! beyond the shared tokenizer ([`logcluster_proto::tokens`]) that the block token filter also
//! uses; the HTTP layer turns a [`Query`] into a scan (time range, tenant, pruning).
//!
//! # Syntax
//!
//! ```text
//! service:payment AND level:ERROR AND "timeout"
//! service:payment timeout                      adjacent terms are ANDed
//! (level:ERROR OR level:FATAL) NOT host:canary-*
//! -debug service:pay* duration_ms:>500 last 15m
//! ```
//!
//! * **Boolean operators** `AND`, `OR`, `NOT` (case-insensitive), `-term` as a short `NOT`, and
//!   parentheses. Precedence is `NOT` > `AND` > `OR`: `a OR b c` is `a OR (b AND c)`.
//! * **Free text**: a bare word `timeout` or a quoted phrase `"upstream timeout"` is a
//!   case-insensitive substring match on the message. Inside quotes `\"` and `\\` escape.
//! * **Fields**: `field:value`. Core fields are `service`, `level`, `host`, `tenant`,
//!   `trace_id`, `message` and `id` (lower case); any other name (dots allowed:
//!   `http.method:GET`, `db.table:orders`) is a free-form field of the entry.
//!   * Equality is exact and case-sensitive (`host:pay-1`, `host:"a b"`), except `message:`
//!     which is a case-insensitive substring match like free text, and `level:` which takes a
//!     level name in any case and its usual spellings (`level:error`, `level:warning`).
//!     A free-form field holding a number matches numerically (`status:502`, `amount:12.50`);
//!     a boolean matches `true` / `false`.
//!   * Wildcards in unquoted values: `*` any run of characters, `?` one character
//!     (`service:pay*`, `host:*-eu-?`). Quoted values are always literal. Wildcards match the
//!     whole value (case-insensitively on `message` and `level`).
//!   * An unquoted value ends at whitespace, `(`, `)` or `"`; quote values holding those.
//!   * `field:*` means the field exists and is not empty (for `level`: is not `UNSPECIFIED`).
//!   * Numeric comparisons: `duration_ms:>500`, `>=`, `<`, `<=`, `amount:=12.5`, and inclusive
//!     ranges `duration_ms:[100 TO 500]`. On `level` they compare severity:
//!     `level:>=WARN`, `level:[WARN TO FATAL]`.
//! * **Relative time**: `last 15m` (units `s`, `m`, `h`, `d`, `w`) as a top-level term is not a
//!   per-entry predicate but a time-range hint ([`Query::last`]): entries from `now - 15m`.
//!   It may not appear inside parentheses, under `NOT` or as a branch of `OR`.
//!
//! # Case-insensitivity
//!
//! Case-insensitive matches fold ASCII letters byte by byte without allocating. A needle that
//! still holds non-ASCII characters after lower-casing is compared against the lower-cased
//! haystack (one allocation per entry). Wildcard patterns fold ASCII letters only.
//!
//! # Errors
//!
//! Nesting of parentheses and `NOT` is limited to [`MAX_DEPTH`] levels, so hostile input
//! cannot exhaust the stack.
//!
//! [`parse`] returns a [`ParseError`] with the byte offset of the offending place; its
//! `Display` shows the input with a caret under it:
//!
//! ```text
//! unbalanced parenthesis: `(` is never closed
//!   (level:ERROR OR level:FATAL
//!   ^
//! ```
//!
//! # Example
//!
//! ```
//! use logcluster_query::lang;
//! use logcluster_proto::{Level, LogEntry};
//!
//! let query = lang::parse("service:payment level:>=warn \"timeout\" last 15m").expect("valid");
//! assert_eq!(query.last, Some(std::time::Duration::from_secs(900)));
//! let entry = LogEntry {
//!     service: "payment".into(),
//!     level: Level::Error as i32,
//!     message: "upstream TIMEOUT after 3s".into(),
//!     ..Default::default()
//! };
//! assert!(query.matches(&entry));
//! assert_eq!(query.to_string(), "last 15m AND service:payment AND level:>=WARN AND timeout");
//! ```

mod eval;
mod hints;
mod parser;
mod printer;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::time::Duration;

use logcluster_proto::Level;
use logcluster_storage::segment::NeedleScope;

pub(crate) use eval::{contains_folded, fold_case};
pub(crate) use hints::{substring_needle, substring_tokens};
pub use parser::{MAX_DEPTH, parse};

/// A parsed query: an optional predicate and an optional relative time range.
#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    /// The per-entry predicate; `None` matches every entry.
    pub expr: Option<Expr>,
    /// `last <duration>`: only entries newer than `now - last` are asked for.
    pub last: Option<Duration>,
}

/// The syntax tree of a query predicate.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// Case-insensitive substring of the message. The parser stores the needle lower-cased.
    Text(String),
    /// A condition on one field.
    Match {
        /// The field tested.
        field: Field,
        /// What its value must satisfy.
        value: Value,
    },
    /// Negation.
    Not(Box<Expr>),
    /// All operands hold (two or more; the parser never builds shorter lists).
    And(Vec<Expr>),
    /// At least one operand holds (two or more).
    Or(Vec<Expr>),
}

/// A field named in `field:value`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Field {
    Service,
    Level,
    Host,
    Tenant,
    TraceId,
    Message,
    Id,
    /// A free-form field of [`logcluster_proto::LogEntry::fields`] (dotted key); never one of
    /// the core names above.
    Custom(String),
}

/// The condition of a `field:value` term.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `field:value` or `field:"value"`: exact equality (substring for `message`, which the
    /// parser stores lower-cased). Never empty.
    Exact(String),
    /// `field:pa?t*ern`: whole-value wildcard match. Holds at least one `*` or `?`.
    Pattern(String),
    /// `field:*`: the field exists and is not empty.
    Exists,
    /// `field:>500` and friends: numeric comparison (finite number).
    Compare(CmpOp, f64),
    /// `field:[lo TO hi]`: inclusive numeric range, `lo <= hi`.
    Range(f64, f64),
    /// `level:ERROR`, `level:>=WARN`: severity comparison (only on [`Field::Level`]).
    Level(CmpOp, Level),
    /// `level:[WARN TO FATAL]`: inclusive severity range, `lo <= hi`.
    LevelRange(Level, Level),
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Gt,
    Ge,
    Lt,
    Le,
}

impl CmpOp {
    /// The operator's spelling after the colon (`=` for `Eq`).
    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
        }
    }

    /// Whether `left <op> right` holds.
    pub fn holds<T: PartialOrd>(self, left: T, right: T) -> bool {
        match self {
            CmpOp::Eq => left == right,
            CmpOp::Gt => left > right,
            CmpOp::Ge => left >= right,
            CmpOp::Lt => left < right,
            CmpOp::Le => left <= right,
        }
    }
}

impl Field {
    /// The name as written in a query.
    pub fn name(&self) -> &str {
        match self {
            Field::Service => "service",
            Field::Level => "level",
            Field::Host => "host",
            Field::Tenant => "tenant",
            Field::TraceId => "trace_id",
            Field::Message => "message",
            Field::Id => "id",
            Field::Custom(name) => name,
        }
    }

    /// The field a name denotes: a core field for its lower-case name, otherwise free-form.
    pub fn from_name(name: &str) -> Field {
        match name {
            "service" => Field::Service,
            "level" => Field::Level,
            "host" => Field::Host,
            "tenant" => Field::Tenant,
            "trace_id" => Field::TraceId,
            "message" => Field::Message,
            "id" => Field::Id,
            other => Field::Custom(other.to_string()),
        }
    }
}

/// Facts every matching entry satisfies, used to skip storage blocks that cannot match.
///
/// Conservative by construction: a hint only ever states something that holds for *every*
/// entry the query matches, so a block excluded by the hints holds no match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hints {
    /// `Some`: every match has one of these exact services.
    pub services: Option<BTreeSet<String>>,
    /// `Some`: bitmask over `Level as i32` (bit n = level n) of the levels a match can have.
    /// Entries whose stored level is outside `0..=6` are matched as `UNSPECIFIED` (bit 0).
    pub levels: Option<u8>,
    /// Lower-cased tokens ([`logcluster_proto::tokens`]) that every match contains as whole
    /// tokens of its message, host, trace id or a string field value. Sorted, no duplicates.
    pub required_tokens: Vec<String>,
    /// ASCII-lowercase text that every match holds, ignoring ASCII case, in the given string
    /// (a substring of its message, or an exact host, trace id or string field value):
    /// storage passes over records without it before decoding them.
    pub record_needle: Option<(String, NeedleScope)>,
    /// Matching reads only an entry's id, tenant, service, level and message (storage may
    /// leave host, trace id and fields undecoded when the consumer needs no more either).
    pub core_and_message_only: bool,
}

/// A query string that could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ParseError {
    /// Byte offset into the input of the offending place.
    pub position: usize,
    /// What is wrong, lower case (``unbalanced parenthesis: `(` is never closed``).
    pub message: String,
    /// The input, kept to render the caret.
    pub input: String,
}

impl ParseError {
    fn render(&self) -> String {
        let shown: String = self
            .input
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let prefix = self.input.get(..self.position).unwrap_or(&self.input);
        let column = prefix.chars().count();
        format!(
            "{} at byte {}\n  {}\n  {}^",
            self.message,
            self.position,
            shown,
            " ".repeat(column)
        )
    }
}

impl Query {
    /// Whether `entry` satisfies the predicate (always true without one). The `last` range is
    /// not checked here: the caller turns it into a scan range.
    pub fn matches(&self, entry: &logcluster_proto::LogEntry) -> bool {
        self.expr.as_ref().is_none_or(|e| eval::matches(e, entry))
    }

    /// Conservative pruning hints for the storage block index.
    pub fn hints(&self) -> Hints {
        match &self.expr {
            Some(expr) => hints::of(expr),
            None => Hints {
                core_and_message_only: true,
                ..Hints::default()
            },
        }
    }
}
