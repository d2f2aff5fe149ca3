//! Canonical printing of a [`Query`]: explicit `AND` / `OR` / `NOT`, parentheses only where
//! needed, quotes only where a bare word would read differently. `parse(q.to_string()) == q`.

use std::fmt::{self, Display, Formatter, Write};
use std::time::Duration;

use super::parser::keyword;
use super::{Expr, Field, Query, Value};

impl Display for Query {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        if let Some(last) = self.last {
            write_duration(f, last)?;
            if self.expr.is_some() {
                f.write_str(" AND ")?;
            }
        }
        match (&self.expr, self.last.is_some()) {
            (Some(expr @ Expr::Or(_)), true) => write!(f, "({expr})"),
            (Some(expr), _) => write!(f, "{expr}"),
            (None, _) => Ok(()),
        }
    }
}

fn write_duration(f: &mut Formatter<'_>, last: Duration) -> fmt::Result {
    let secs = last.as_secs();
    let (count, unit) = [(604_800, "w"), (86_400, "d"), (3_600, "h"), (60, "m")]
        .into_iter()
        .find(|(size, _)| secs > 0 && secs.is_multiple_of(*size))
        .map_or((secs, "s"), |(size, unit)| (secs / size, unit));
    write!(f, "last {count}{unit}")
}

impl Display for Expr {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Text(text) => write_text(f, text),
            Expr::Match { field, value } => {
                f.write_str(field.name())?;
                f.write_char(':')?;
                write_value(f, field, value)
            }
            Expr::Not(inner) => match **inner {
                Expr::And(_) | Expr::Or(_) => write!(f, "NOT ({inner})"),
                _ => write!(f, "NOT {inner}"),
            },
            Expr::And(operands) => write_list(f, operands, " AND ", |e| {
                matches!(e, Expr::And(_) | Expr::Or(_))
            }),
            Expr::Or(branches) => write_list(f, branches, " OR ", |e| matches!(e, Expr::Or(_))),
        }
    }
}

fn write_list(
    f: &mut Formatter<'_>,
    items: &[Expr],
    separator: &str,
    needs_parens: impl Fn(&Expr) -> bool,
) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(separator)?;
        }
        if needs_parens(item) {
            write!(f, "({item})")?;
        } else {
            write!(f, "{item}")?;
        }
    }
    Ok(())
}

/// Whether `word` reads back as itself when written bare (outside a field value).
fn is_plain_word(word: &str) -> bool {
    !word.is_empty()
        && !word.starts_with('-')
        && keyword(word).is_none()
        && !word.eq_ignore_ascii_case("last")
        && word.chars().all(|c| {
            !c.is_whitespace() && !c.is_control() && !matches!(c, '(' | ')' | '"' | '\\' | ':')
        })
}

fn write_text(f: &mut Formatter<'_>, text: &str) -> fmt::Result {
    if is_plain_word(text) {
        f.write_str(text)
    } else {
        write_quoted(f, text)
    }
}

fn write_quoted(f: &mut Formatter<'_>, text: &str) -> fmt::Result {
    f.write_char('"')?;
    for c in text.chars() {
        if c == '"' || c == '\\' {
            f.write_char('\\')?;
        }
        f.write_char(c)?;
    }
    f.write_char('"')
}

/// Whether an exact value reads back as itself when written bare after `field:`.
fn is_plain_value(value: &str) -> bool {
    !value.is_empty()
        && !value.starts_with(['<', '>', '=', '['])
        && value.chars().all(|c| {
            !c.is_whitespace()
                && !c.is_control()
                && !matches!(c, '(' | ')' | '"' | '\\' | '*' | '?')
        })
}

fn write_value(f: &mut Formatter<'_>, field: &Field, value: &Value) -> fmt::Result {
    match value {
        Value::Exact(text) if is_plain_value(text) => f.write_str(text),
        Value::Exact(text) => write_quoted(f, text),
        Value::Pattern(pattern) => f.write_str(pattern),
        Value::Exists => f.write_char('*'),
        Value::Compare(op, number) => write!(f, "{}{number}", op.as_str()),
        Value::Range(low, high) => write!(f, "[{low} TO {high}]"),
        Value::Level(super::CmpOp::Eq, level) if *field == Field::Level => {
            f.write_str(level.as_str())
        }
        Value::Level(op, level) => write!(f, "{}{}", op.as_str(), level.as_str()),
        Value::LevelRange(low, high) => write!(f, "[{} TO {}]", low.as_str(), high.as_str()),
    }
}
