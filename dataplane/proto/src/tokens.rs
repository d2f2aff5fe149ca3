//! The one tokenizer shared by the block token filter (storage) and query planning (query).
//!
//! A token is a maximal run of ASCII letters, digits, `_`, or non-ASCII bytes (so UTF-8 words
//! stay whole), lower-cased. Both sides must agree byte for byte, which is why it lives here.

/// Calls `f` with every token of `text`, in order, lower-cased.
pub fn for_each_token(text: &str, mut f: impl FnMut(&str)) {
    let mut buf = String::new();
    for ch in text.chars() {
        if ch.is_ascii_alphanumeric() || ch == '_' || !ch.is_ascii() {
            buf.push(ch.to_ascii_lowercase());
        } else if !buf.is_empty() {
            f(&buf);
            buf.clear();
        }
    }
    if !buf.is_empty() {
        f(&buf);
    }
}

/// Whether `byte` belongs to a token (see the module docs).
pub fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || !byte.is_ascii()
}

/// The tokens of `text` that are certainly whole tokens in any text that contains `text` as a
/// substring: all tokens except a first one touching the start and a last one touching the end
/// (those may continue outside the substring).
pub fn interior_tokens(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    for_each_token(text, |t| tokens.push(t.to_string()));
    let bytes = text.as_bytes();
    if bytes.first().copied().is_some_and(is_token_byte) && !tokens.is_empty() {
        tokens.remove(0);
    }
    if bytes.last().copied().is_some_and(is_token_byte) && !tokens.is_empty() {
        tokens.pop();
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_punctuation_and_lowercases() {
        let mut out = Vec::new();
        for_each_token("GET /api/v1/orders 200 txn_ABC-12", |t| {
            out.push(t.to_string())
        });
        assert_eq!(out, ["get", "api", "v1", "orders", "200", "txn_abc", "12"]);
    }

    #[test]
    fn interior_tokens_drop_possibly_partial_edges() {
        assert_eq!(interior_tokens("upstream timeout after"), ["timeout"]);
        assert_eq!(interior_tokens(" timeout "), ["timeout"]);
        assert!(interior_tokens("timeout").is_empty());
    }
}
