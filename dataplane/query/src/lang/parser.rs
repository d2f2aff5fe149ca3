//! Recursive-descent parser from a query string to a [`Query`]; owns syntax errors and their
//! byte positions. It builds the tree only; it does not evaluate anything.

use std::time::Duration;

use logcluster_proto::Level;

use super::{CmpOp, Expr, Field, ParseError, Query, Value};

/// Parses a query string. An empty (or all-blank) string matches everything.
pub fn parse(input: &str) -> Result<Query, ParseError> {
    let mut parser = Parser {
        input,
        pos: 0,
        depth: 0,
    };
    parser.skip_ws();
    if parser.at_end() {
        return Ok(Query {
            expr: None,
            last: None,
        });
    }
    let node = parser.parse_or()?;
    parser.skip_ws();
    if !parser.at_end() {
        // Only a stray `)` stops the top-level loop before the end.
        return Err(parser.error_at(parser.pos, "unbalanced parenthesis: `)` without `(`"));
    }
    parser.finish(node)
}

/// The parse tree before `last` is lifted out.
enum Node {
    Leaf(Expr),
    Last { duration: Duration, position: usize },
    Group(Box<Node>),
    Not(Box<Node>),
    And(Vec<Node>),
    Or(Vec<Node>),
}

struct Parser<'a> {
    input: &'a str,
    pos: usize,
    /// Current nesting of parentheses and negations; bounded by [`MAX_DEPTH`] so that hostile
    /// input cannot exhaust the stack of the parser, printer or evaluator.
    depth: usize,
}

/// The deepest nesting of parentheses and `NOT` a query may use.
pub const MAX_DEPTH: usize = 64;

/// Characters that end a bare word.
fn ends_word(c: char) -> bool {
    c.is_whitespace() || c == '(' || c == ')' || c == '"'
}

/// Characters allowed in a field name.
fn is_field_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '@')
}

/// Whether `word` is one of the reserved words (`AND`, `OR`, `NOT`), case-insensitively.
pub(super) fn keyword(word: &str) -> Option<&'static str> {
    ["AND", "OR", "NOT"]
        .into_iter()
        .find(|k| word.eq_ignore_ascii_case(k))
}

/// Parses `15m`-style durations (`s`, `m`, `h`, `d`, `w`); `None` if `word` is not one.
fn parse_duration(word: &str) -> Option<Result<Duration, &'static str>> {
    let split = word.find(|c: char| !c.is_ascii_digit())?;
    if split == 0 {
        return None;
    }
    let unit: u64 = match word.get(split..)? {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return None,
    };
    let Ok(count) = word.get(..split)?.parse::<u64>() else {
        return Some(Err("duration is too large"));
    };
    if count == 0 {
        return Some(Err("duration must be positive"));
    }
    Some(
        count
            .checked_mul(unit)
            .map(Duration::from_secs)
            .ok_or("duration is too large"),
    )
}

impl<'a> Parser<'a> {
    fn error_at(&self, position: usize, message: impl Into<String>) -> ParseError {
        ParseError {
            position,
            message: message.into(),
            input: self.input.to_string(),
        }
    }

    fn rest(&self) -> &'a str {
        self.input.get(self.pos..).unwrap_or("")
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.input.len()
    }

    fn skip_ws(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start().len();
    }

    /// The bare word at the cursor (possibly empty), without consuming it.
    fn peek_word(&self) -> &'a str {
        let rest = self.rest();
        let end = rest.find(ends_word).unwrap_or(rest.len());
        rest.get(..end).unwrap_or("")
    }

    /// The keyword at the cursor, if the next bare word is one.
    fn peek_keyword(&self) -> Option<&'static str> {
        keyword(self.peek_word())
    }

    fn take_word(&mut self) -> &'a str {
        let word = self.peek_word();
        self.pos += word.len();
        word
    }

    fn parse_or(&mut self) -> Result<Node, ParseError> {
        let mut branches = vec![self.parse_and()?];
        loop {
            self.skip_ws();
            if self.peek_keyword() != Some("OR") {
                break;
            }
            let at = self.pos;
            self.take_word();
            self.expect_operand(at, "OR")?;
            branches.push(self.parse_and()?);
        }
        Ok(if branches.len() == 1 {
            branches.pop().expect("one branch was just checked")
        } else {
            Node::Or(branches)
        })
    }

    /// After an operator at `at`: a term must follow.
    fn expect_operand(&mut self, at: usize, operator: &str) -> Result<(), ParseError> {
        self.skip_ws();
        let next = self.peek_keyword();
        if self.at_end() || self.peek() == Some(')') || matches!(next, Some("AND" | "OR")) {
            return Err(self.error_at(
                at,
                format!("dangling operator: {operator} needs a term on its right"),
            ));
        }
        Ok(())
    }

    fn parse_and(&mut self) -> Result<Node, ParseError> {
        let mut operands = vec![self.parse_unary()?];
        loop {
            self.skip_ws();
            if self.at_end() || self.peek() == Some(')') {
                break;
            }
            match self.peek_keyword() {
                Some("OR") => break,
                Some("AND") => {
                    let at = self.pos;
                    self.take_word();
                    self.expect_operand(at, "AND")?;
                }
                _ => {}
            }
            operands.push(self.parse_unary()?);
        }
        Ok(if operands.len() == 1 {
            operands.pop().expect("one operand was just checked")
        } else {
            Node::And(operands)
        })
    }

    fn parse_unary(&mut self) -> Result<Node, ParseError> {
        self.skip_ws();
        if self.depth >= MAX_DEPTH {
            return Err(self.error_at(
                self.pos,
                format!("query nests deeper than {MAX_DEPTH} levels"),
            ));
        }
        self.depth += 1;
        let node = self.parse_unary_inner();
        self.depth -= 1;
        node
    }

    fn parse_unary_inner(&mut self) -> Result<Node, ParseError> {
        let at = self.pos;
        if self.peek_keyword() == Some("NOT") {
            self.take_word();
            self.expect_operand(at, "NOT")?;
            return Ok(Node::Not(Box::new(self.parse_unary()?)));
        }
        if self.peek() == Some('-') {
            self.pos += 1;
            match self.peek() {
                None => {
                    return Err(
                        self.error_at(at, "dangling operator: `-` needs a term right after it")
                    );
                }
                Some(c) if c.is_whitespace() || c == ')' => {
                    return Err(
                        self.error_at(at, "dangling operator: `-` needs a term right after it")
                    );
                }
                Some(_) => return Ok(Node::Not(Box::new(self.parse_unary()?))),
            }
        }
        self.parse_primary()
    }

    fn parse_primary(&mut self) -> Result<Node, ParseError> {
        self.skip_ws();
        let at = self.pos;
        match self.peek() {
            None => Err(self.error_at(at, "expected a term")),
            Some('(') => {
                self.pos += 1;
                self.skip_ws();
                if self.peek() == Some(')') {
                    return Err(self.error_at(at, "empty parentheses"));
                }
                let inner = self.parse_or()?;
                self.skip_ws();
                if self.peek() != Some(')') {
                    return Err(self.error_at(at, "unbalanced parenthesis: `(` is never closed"));
                }
                self.pos += 1;
                Ok(Node::Group(Box::new(inner)))
            }
            Some(')') => Err(self.error_at(at, "unbalanced parenthesis: `)` without `(`")),
            Some('"') => {
                let text = self.quoted()?;
                if text.is_empty() {
                    return Err(self.error_at(at, "empty value: the phrase is empty"));
                }
                Ok(Node::Leaf(Expr::Text(super::eval::fold_case(&text))))
            }
            Some(_) => {
                if let Some(op) = self.peek_keyword() {
                    return Err(self.error_at(
                        at,
                        format!("dangling operator: {op} needs a term on its left"),
                    ));
                }
                if let Some(field_len) = self.field_prefix() {
                    let name = self.rest().get(..field_len).unwrap_or("");
                    self.pos += field_len + 1;
                    let field = Field::from_name(name);
                    let value = self.field_value(&field)?;
                    return Ok(Node::Leaf(Expr::Match { field, value }));
                }
                let word = self.take_word();
                if word.eq_ignore_ascii_case("last") {
                    let save = self.pos;
                    self.skip_ws();
                    let duration_at = self.pos;
                    if let Some(duration) = parse_duration(self.peek_word()) {
                        let duration = duration.map_err(|m| self.error_at(duration_at, m))?;
                        self.take_word();
                        return Ok(Node::Last {
                            duration,
                            position: at,
                        });
                    }
                    self.pos = save;
                }
                Ok(Node::Leaf(Expr::Text(super::eval::fold_case(word))))
            }
        }
    }

    /// The length of `name` when the cursor is at `name:` with a valid field name.
    fn field_prefix(&self) -> Option<usize> {
        let word = self.peek_word();
        let colon = word.find(':')?;
        let name = word.get(..colon)?;
        let valid = !name.is_empty() && !name.starts_with('-') && name.chars().all(is_field_char);
        valid.then_some(colon)
    }

    /// Reads a quoted string at the cursor (which is on `"`), handling `\"` and `\\`.
    fn quoted(&mut self) -> Result<String, ParseError> {
        let start = self.pos;
        self.pos += 1;
        let mut out = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((offset, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos += offset + 1;
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, escaped)) => out.push(escaped),
                    None => break,
                },
                other => out.push(other),
            }
        }
        Err(self.error_at(start, "unterminated quote"))
    }

    /// Parses what follows `field:`.
    fn field_value(&mut self, field: &Field) -> Result<Value, ParseError> {
        let at = self.pos;
        let is_level = *field == Field::Level;
        match self.peek() {
            None => return Err(self.error_at(at, format!("empty value after `{}:`", field.name()))),
            Some(c) if c.is_whitespace() || c == ')' || c == '(' => {
                return Err(self.error_at(at, format!("empty value after `{}:`", field.name())));
            }
            Some('"') => {
                let text = self.quoted()?;
                if text.is_empty() {
                    return Err(self.error_at(at, format!("empty value after `{}:`", field.name())));
                }
                return self.exact(field, text, at);
            }
            Some('[') => {
                self.pos += 1;
                return self.range(is_level, at);
            }
            _ => {}
        }
        let rest = self.rest();
        let op = [
            ("<=", CmpOp::Le),
            (">=", CmpOp::Ge),
            ("<", CmpOp::Lt),
            (">", CmpOp::Gt),
            ("=", CmpOp::Eq),
        ]
        .into_iter()
        .find(|(spelling, _)| rest.starts_with(spelling));
        if let Some((spelling, op)) = op {
            self.pos += spelling.len();
            let value_at = self.pos;
            let word = self.take_word();
            if word.is_empty() {
                return Err(self.error_at(
                    value_at,
                    format!("empty value after `{}:{spelling}`", field.name()),
                ));
            }
            return if is_level {
                Ok(Value::Level(op, self.level(word, value_at)?))
            } else {
                Ok(Value::Compare(op, self.number(word, value_at)?))
            };
        }
        let word = self.take_word();
        if word == "*" {
            return Ok(Value::Exists);
        }
        if word.contains(['*', '?']) {
            return Ok(Value::Pattern(word.to_string()));
        }
        self.exact(field, word.to_string(), at)
    }

    fn exact(&self, field: &Field, text: String, at: usize) -> Result<Value, ParseError> {
        Ok(match field {
            Field::Level => Value::Level(CmpOp::Eq, self.level(&text, at)?),
            Field::Message => Value::Exact(super::eval::fold_case(&text)),
            _ => Value::Exact(text),
        })
    }

    fn level(&self, word: &str, at: usize) -> Result<Level, ParseError> {
        Level::parse(word)
            .filter(|_| !word.trim().is_empty())
            .ok_or_else(|| {
                self.error_at(
                    at,
                    format!(
                        "unknown level {word:?} (use TRACE, DEBUG, INFO, WARN, ERROR or FATAL)"
                    ),
                )
            })
    }

    fn number(&self, word: &str, at: usize) -> Result<f64, ParseError> {
        word.parse::<f64>()
            .ok()
            .filter(|n| n.is_finite())
            .ok_or_else(|| self.error_at(at, format!("bad number {word:?}")))
    }

    /// `[lo TO hi]` after the `[` (which is at `open`).
    fn range(&mut self, is_level: bool, open: usize) -> Result<Value, ParseError> {
        let bound = |parser: &mut Parser<'a>| -> Result<(&'a str, usize), ParseError> {
            parser.skip_ws();
            let at = parser.pos;
            let rest = parser.rest();
            let end = rest
                .find(|c: char| ends_word(c) || c == ']')
                .unwrap_or(rest.len());
            parser.pos += end;
            let word = rest.get(..end).unwrap_or("");
            if word.is_empty() || word.eq_ignore_ascii_case("TO") {
                return Err(parser.error_at(at, "empty value: a range is written `[low TO high]`"));
            }
            Ok((word, at))
        };
        let (low, low_at) = bound(self)?;
        self.skip_ws();
        let to_at = self.pos;
        if !self.take_word().eq_ignore_ascii_case("TO") {
            return Err(self.error_at(to_at, "expected `TO` in range `[low TO high]`"));
        }
        let (high, high_at) = bound(self)?;
        self.skip_ws();
        if self.peek() != Some(']') {
            return Err(self.error_at(open, "unclosed range: `[` needs a matching `]`"));
        }
        self.pos += 1;
        if is_level {
            let (low, high) = (self.level(low, low_at)?, self.level(high, high_at)?);
            if low > high {
                return Err(self.error_at(open, "empty range: low bound is above high bound"));
            }
            Ok(Value::LevelRange(low, high))
        } else {
            let (low, high) = (self.number(low, low_at)?, self.number(high, high_at)?);
            if low > high {
                return Err(self.error_at(open, "empty range: low bound is above high bound"));
            }
            Ok(Value::Range(low, high))
        }
    }

    /// Lifts top-level `last` terms into [`Query::last`]; rejects them anywhere else.
    fn finish(&self, node: Node) -> Result<Query, ParseError> {
        let mut last = None;
        let expr = match node {
            Node::Last { duration, .. } => {
                last = Some(duration);
                None
            }
            Node::And(operands) => {
                let mut kept = Vec::new();
                for operand in operands {
                    if let Node::Last { duration, position } = operand {
                        if last.is_some() {
                            return Err(self.error_at(position, "`last` given twice"));
                        }
                        last = Some(duration);
                    } else {
                        kept.push(self.lower(operand)?);
                    }
                }
                match kept.len() {
                    0 => None,
                    1 => kept.pop(),
                    _ => Some(Expr::And(kept)),
                }
            }
            other => Some(self.lower(other)?),
        };
        Ok(Query { expr, last })
    }

    fn lower(&self, node: Node) -> Result<Expr, ParseError> {
        Ok(match node {
            Node::Leaf(expr) => expr,
            Node::Last { position, .. } => {
                return Err(self.error_at(
                    position,
                    "`last` must be a top-level term, not inside parentheses, NOT or OR",
                ));
            }
            Node::Group(inner) => self.lower(*inner)?,
            Node::Not(inner) => Expr::Not(Box::new(self.lower(*inner)?)),
            Node::And(operands) => Expr::And(
                operands
                    .into_iter()
                    .map(|n| self.lower(n))
                    .collect::<Result<_, _>>()?,
            ),
            Node::Or(branches) => Expr::Or(
                branches
                    .into_iter()
                    .map(|n| self.lower(n))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }
}
