//! Exact evaluation of an [`Expr`] against one [`LogEntry`]. Allocation-free for ASCII
//! needles and string fields; it never panics on any entry.

use logcluster_proto::field_value::Kind;
use logcluster_proto::{FieldValue, Level, LogEntry};

use super::{CmpOp, Expr, Field, Value};

/// Whether `entry` satisfies `expr`.
pub(super) fn matches(expr: &Expr, entry: &LogEntry) -> bool {
    match expr {
        Expr::Text(needle) => contains_folded(&entry.message, needle),
        Expr::Match { field, value } => match_field(field, value, entry),
        Expr::Not(inner) => !matches(inner, entry),
        Expr::And(operands) => operands.iter().all(|e| matches(e, entry)),
        Expr::Or(branches) => branches.iter().any(|e| matches(e, entry)),
    }
}

fn match_field(field: &Field, value: &Value, entry: &LogEntry) -> bool {
    let text = match field {
        Field::Service => &entry.service,
        Field::Host => &entry.host,
        Field::Tenant => &entry.tenant,
        Field::TraceId => &entry.trace_id,
        Field::Id => &entry.id,
        Field::Message => return match_message(value, &entry.message),
        Field::Level => return match_level(value, entry.level_enum()),
        Field::Custom(name) => {
            return entry
                .fields
                .get(name)
                .is_some_and(|v| match_custom(value, v));
        }
    };
    match value {
        Value::Exact(expected) => text == expected,
        Value::Pattern(pattern) => glob(pattern.as_bytes(), text.as_bytes(), false),
        Value::Exists => !text.is_empty(),
        Value::Compare(..) | Value::Range(..) => {
            text.trim().parse::<f64>().is_ok_and(|n| compare(value, n))
        }
        Value::Level(..) | Value::LevelRange(..) => false,
    }
}

fn match_message(value: &Value, message: &str) -> bool {
    match value {
        Value::Exact(needle) => contains_folded(message, needle),
        Value::Pattern(pattern) => glob(pattern.as_bytes(), message.as_bytes(), true),
        Value::Exists => !message.is_empty(),
        Value::Compare(..) | Value::Range(..) => message
            .trim()
            .parse::<f64>()
            .is_ok_and(|n| compare(value, n)),
        Value::Level(..) | Value::LevelRange(..) => false,
    }
}

fn match_level(value: &Value, level: Level) -> bool {
    match value {
        Value::Level(op, expected) => op.holds(level, *expected),
        Value::LevelRange(low, high) => *low <= level && level <= *high,
        Value::Exists => level != Level::Unspecified,
        Value::Pattern(pattern) => glob(pattern.as_bytes(), level.as_str().as_bytes(), true),
        Value::Exact(name) => Level::parse(name) == Some(level),
        Value::Compare(..) | Value::Range(..) => compare(value, f64::from(level as i32)),
    }
}

/// Free-form fields: strings compare exactly, numbers numerically, booleans as `true` /
/// `false`; JSON-kind values (arrays and nulls) only equal a value that is itself JSON-like
/// (`[`, `{` or `null`), which keeps token hints sound (JSON values are not token-indexed).
fn match_custom(value: &Value, field: &FieldValue) -> bool {
    match value {
        Value::Exact(expected) => match &field.kind {
            Some(Kind::Str(s)) => s == expected,
            Some(Kind::Json(s)) => is_json_like(expected) && s == expected,
            // An integer against an integer exactly: an f64 holds integers exactly only up
            // to 2^53, past which `id:1234567890123456790` would equal 1234567890123456789.
            Some(Kind::Int(i)) => match expected.parse::<i64>() {
                Ok(n) => n == *i,
                Err(_) => expected.parse::<f64>().is_ok_and(|n| n == *i as f64),
            },
            Some(Kind::Float(_)) => expected
                .parse::<f64>()
                .is_ok_and(|n| field.as_f64() == Some(n)),
            Some(Kind::Bool(b)) => expected == if *b { "true" } else { "false" },
            None => false,
        },
        Value::Pattern(pattern) => match &field.kind {
            Some(Kind::Str(s) | Kind::Json(s)) => glob(pattern.as_bytes(), s.as_bytes(), false),
            Some(_) => glob(pattern.as_bytes(), field.to_text().as_bytes(), false),
            None => false,
        },
        Value::Exists => match &field.kind {
            Some(Kind::Str(s) | Kind::Json(s)) => !s.is_empty(),
            Some(_) => true,
            None => false,
        },
        Value::Compare(..) | Value::Range(..) => field.as_f64().is_some_and(|n| compare(value, n)),
        Value::Level(..) | Value::LevelRange(..) => false,
    }
}

/// Whether an exact value could equal a JSON-kind field's text.
pub(super) fn is_json_like(value: &str) -> bool {
    value.starts_with(['[', '{']) || value == "null"
}

fn compare(value: &Value, number: f64) -> bool {
    match value {
        Value::Compare(op, bound) => op.holds(number, *bound),
        Value::Range(low, high) => *low <= number && number <= *high,
        _ => false,
    }
}

/// Text folded for case-insensitive matching: each character's Unicode lower case, with the
/// final sigma as sigma (`str::to_lowercase` writes `ς` at a word's end, so a folded `ΟΔΥΣ`
/// would not be found in a folded `ΟΔΥΣΣΕΑΣ`).
pub(crate) fn fold_case(text: &str) -> String {
    text.chars()
        .flat_map(char::to_lowercase)
        .map(|c| if c == 'ς' { 'σ' } else { c })
        .collect()
}

/// Case-insensitive substring test; `needle` is already folded ([`fold_case`]). ASCII needles
/// are compared byte-wise with ASCII folding; others against the folded haystack.
pub(crate) fn contains_folded(haystack: &str, needle: &str) -> bool {
    if needle.is_empty() {
        return true;
    }
    if !needle.is_ascii() {
        return fold_case(haystack).contains(needle);
    }
    logcluster_storage::segment::contains_ignore_ascii_case(haystack.as_bytes(), needle.as_bytes())
}

/// Length of the UTF-8 sequence starting with `byte` (1 for stray continuation bytes).
fn char_len(byte: u8) -> usize {
    match byte {
        0xF0.. => 4,
        0xE0.. => 3,
        0xC0.. => 2,
        _ => 1,
    }
}

/// Whole-string wildcard match: `*` any run of characters, `?` exactly one character.
/// `fold` compares ASCII letters case-insensitively. Linear backtracking on the last `*`.
pub(super) fn glob(pattern: &[u8], text: &[u8], fold: bool) -> bool {
    let same = |a: u8, b: u8| {
        if fold {
            a.eq_ignore_ascii_case(&b)
        } else {
            a == b
        }
    };
    let (mut p, mut t) = (0usize, 0usize);
    let mut resume: Option<(usize, usize)> = None;
    while let Some(&current) = text.get(t) {
        match pattern.get(p) {
            Some(b'*') => {
                resume = Some((p, t));
                p += 1;
                continue;
            }
            Some(b'?') => {
                p += 1;
                t += char_len(current);
                continue;
            }
            Some(&literal) if same(literal, current) => {
                p += 1;
                t += 1;
                continue;
            }
            _ => {}
        }
        match resume {
            Some((star, from)) => {
                let next = from + text.get(from).map_or(1, |b| char_len(*b));
                resume = Some((star, next));
                p = star + 1;
                t = next;
            }
            None => return false,
        }
    }
    if t > text.len() {
        return false;
    }
    pattern
        .get(p..)
        .is_some_and(|rest| rest.iter().all(|b| *b == b'*'))
}

impl CmpOp {
    /// All operators, for tests and generators.
    #[cfg(test)]
    pub(super) const ALL: [CmpOp; 5] = [CmpOp::Eq, CmpOp::Gt, CmpOp::Ge, CmpOp::Lt, CmpOp::Le];
}
