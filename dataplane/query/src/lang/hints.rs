//! Derivation of conservative pruning [`Hints`] from an [`Expr`]. Every rule here must only
//! state facts that hold for *every* matching entry; when unsure, a rule says nothing.

use std::collections::BTreeSet;

use logcluster_proto::Level;
use logcluster_proto::tokens::{for_each_token, interior_tokens};
use logcluster_storage::segment::NeedleScope;

use super::eval::{glob, is_json_like};
use super::{Expr, Field, Hints, Value};

/// Hints with every set of tokens as a set, merged bottom-up.
struct Facts {
    services: Option<BTreeSet<String>>,
    levels: Option<u8>,
    tokens: BTreeSet<String>,
    /// ASCII-lowercase bytes every match holds in the given string, ignoring ASCII case.
    needle: Option<(String, NeedleScope)>,
}

impl Facts {
    fn nothing() -> Facts {
        Facts {
            services: None,
            levels: None,
            tokens: BTreeSet::new(),
            needle: None,
        }
    }
}

pub(super) fn of(expr: &Expr) -> Hints {
    let facts = facts(expr);
    Hints {
        services: facts.services,
        levels: facts.levels,
        required_tokens: facts.tokens.into_iter().collect(),
        record_needle: facts.needle,
        core_and_message_only: reads_core_and_message(expr),
    }
}

/// Whether matching `expr` reads only an entry's id, tenant, service, level and message.
fn reads_core_and_message(expr: &Expr) -> bool {
    match expr {
        Expr::Text(_) => true,
        Expr::Match { field, .. } => matches!(
            field,
            Field::Service | Field::Level | Field::Tenant | Field::Message | Field::Id
        ),
        Expr::Not(inner) => reads_core_and_message(inner),
        Expr::And(operands) | Expr::Or(operands) => operands.iter().all(reads_core_and_message),
    }
}

fn facts(expr: &Expr) -> Facts {
    match expr {
        Expr::Text(needle) => Facts {
            tokens: substring_tokens(needle),
            needle: substring_needle(needle, NeedleScope::Message),
            ..Facts::nothing()
        },
        Expr::Match { field, value } => field_facts(field, value),
        // A negation can match entries of any service, level or content.
        Expr::Not(_) => Facts::nothing(),
        Expr::And(operands) => {
            let mut all = Facts::nothing();
            for operand in operands {
                let next = facts(operand);
                all.services = match (all.services, next.services) {
                    (Some(a), Some(b)) => Some(a.intersection(&b).cloned().collect()),
                    (a, b) => a.or(b),
                };
                all.levels = match (all.levels, next.levels) {
                    (Some(a), Some(b)) => Some(a & b),
                    (a, b) => a.or(b),
                };
                all.tokens.extend(next.tokens);
                // Any one operand's needle will do: the longest is the most selective.
                if next.needle.as_ref().map_or(0, |(n, _)| n.len())
                    > all.needle.as_ref().map_or(0, |(n, _)| n.len())
                {
                    all.needle = next.needle;
                }
            }
            all
        }
        Expr::Or(branches) => {
            let mut iter = branches.iter().map(facts);
            let Some(mut any) = iter.next() else {
                return Facts::nothing();
            };
            for next in iter {
                any.services = match (any.services, next.services) {
                    (Some(mut a), Some(b)) => {
                        a.extend(b);
                        Some(a)
                    }
                    _ => None,
                };
                any.levels = match (any.levels, next.levels) {
                    (Some(a), Some(b)) => Some(a | b),
                    _ => None,
                };
                // Only tokens every branch requires are required by the whole.
                any.tokens.retain(|t| next.tokens.contains(t));
                // Branches may hold different text: no single needle is certain.
                any.needle = None;
            }
            any
        }
    }
}

/// Tokens certainly whole in any text containing `needle` (lower-cased) case-insensitively.
/// Non-ASCII needles are matched by Unicode lower-casing, which can turn a non-ASCII
/// character into an ASCII one, so they promise nothing.
pub(crate) fn substring_tokens(needle: &str) -> BTreeSet<String> {
    if !needle.is_ascii() {
        return BTreeSet::new();
    }
    interior_tokens(needle).into_iter().collect()
}

/// The record needle of a case-insensitive message substring: only ASCII needles, which
/// are matched byte-wise with ASCII folding (a non-ASCII one is matched after Unicode
/// lower-casing, which the record's bytes need not show).
pub(crate) fn substring_needle(needle: &str, scope: NeedleScope) -> Option<(String, NeedleScope)> {
    (!needle.is_empty() && needle.is_ascii()).then(|| (needle.to_ascii_lowercase(), scope))
}

/// The record needle of a string field equal to `value`: its bytes are stored as they are.
fn exact_needle(value: &str, scope: NeedleScope) -> Option<(String, NeedleScope)> {
    (!value.is_empty()).then(|| (value.to_ascii_lowercase(), scope))
}

/// All tokens of a value that a field equals exactly.
fn all_tokens(value: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for_each_token(value, |t| {
        out.insert(t.to_string());
    });
    out
}

/// Tokens of the literal runs of a wildcard pattern (each run is a substring of the value).
fn pattern_tokens(pattern: &str, folded: bool) -> BTreeSet<String> {
    pattern
        .split(['*', '?'])
        .filter(|run| !folded || run.is_ascii())
        .flat_map(interior_tokens)
        .collect()
}

fn level_mask(accepts: impl Fn(Level) -> bool) -> u8 {
    Level::ALL
        .into_iter()
        .filter(|l| accepts(*l))
        .fold(0u8, |mask, l| mask | (1 << (l as i32)))
}

fn field_facts(field: &Field, value: &Value) -> Facts {
    let mut facts = Facts::nothing();
    match (field, value) {
        (Field::Service, Value::Exact(service)) => {
            facts.services = Some(BTreeSet::from([service.clone()]));
        }
        (Field::Level, value) => {
            facts.levels = Some(match value {
                Value::Level(op, expected) => level_mask(|l| op.holds(l, *expected)),
                Value::LevelRange(low, high) => level_mask(|l| *low <= l && l <= *high),
                Value::Exists => level_mask(|l| l != Level::Unspecified),
                Value::Pattern(p) => {
                    level_mask(|l| glob(p.as_bytes(), l.as_str().as_bytes(), true))
                }
                Value::Exact(name) => level_mask(|l| Level::parse(name) == Some(l)),
                // Numeric comparisons on the level number: not worth deriving.
                Value::Compare(..) | Value::Range(..) => return facts,
            });
        }
        (Field::Host | Field::TraceId, Value::Exact(text)) => {
            facts.tokens = all_tokens(text);
            let scope = if *field == Field::Host {
                NeedleScope::Host
            } else {
                NeedleScope::TraceId
            };
            facts.needle = exact_needle(text, scope);
        }
        (Field::Host | Field::TraceId, Value::Pattern(pattern)) => {
            facts.tokens = pattern_tokens(pattern, false)
        }
        (Field::Message, Value::Exact(needle)) => {
            facts.tokens = substring_tokens(needle);
            facts.needle = substring_needle(needle, NeedleScope::Message);
        }
        (Field::Message, Value::Pattern(pattern)) => facts.tokens = pattern_tokens(pattern, true),
        // Only string values are token-indexed: a value that could equal a number, a boolean
        // or a JSON value promises nothing.
        (Field::Custom(_), Value::Exact(text))
            if text.trim().parse::<f64>().is_err()
                && text != "true"
                && text != "false"
                && !is_json_like(text) =>
        {
            facts.tokens = all_tokens(text);
            facts.needle = exact_needle(text, NeedleScope::Record);
        }
        _ => {}
    }
    facts
}
