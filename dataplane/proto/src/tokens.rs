//! The one tokenizer shared by the block token filter (storage) and query planning (query).
//!
//! A token is a maximal run of ASCII letters, digits, `_`, or non-ASCII bytes (so UTF-8 words
//! stay whole), lower-cased. Both sides must agree byte for byte, which is why it lives here.

/// Calls `f` with every token of `text`, in order, lower-cased.
///
/// Works on bytes: every byte of a non-ASCII character is a token byte, so a token never
/// starts or ends inside a character, and lower-casing ASCII letters byte by byte is what
/// lower-casing them character by character does. Tokens without upper-case letters are
/// passed as slices of `text`, without a copy.
pub fn for_each_token(text: &str, mut f: impl FnMut(&str)) {
    let bytes = text.as_bytes();
    let mut lowered = String::new();
    let mut at = 0;
    while at < bytes.len() {
        if !is_token_byte(bytes[at]) {
            at += 1;
            continue;
        }
        let start = at;
        while at < bytes.len() && is_token_byte(bytes[at]) {
            at += 1;
        }
        let token = &text[start..at];
        if token.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered.clear();
            lowered.push_str(token);
            lowered.make_ascii_lowercase();
            f(&lowered);
        } else {
            f(token);
        }
    }
}

/// Whether `byte` belongs to a token (see the module docs).
pub const fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || !byte.is_ascii()
}

/// Each byte lower-cased when it is a token byte, 0 when it separates tokens (no token byte
/// is 0).
const TOKEN_BYTE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut byte = 0;
    while byte < 256 {
        if is_token_byte(byte as u8) {
            table[byte] = (byte as u8).to_ascii_lowercase();
        }
        byte += 1;
    }
    table
};

/// Calls `f` with [`fnv1a64`] of every token of `text`, in order: what calling it with the
/// hash of each token [`for_each_token`] passes gives, in one pass over the bytes and without
/// lower-casing into a buffer (the block token filter's hot path).
///
/// [`fnv1a64`]: crate::ids::fnv1a64
pub fn for_each_token_hash(text: &str, mut f: impl FnMut(u64)) {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    let mut in_token = false;
    for &byte in text.as_bytes() {
        let lowered = TOKEN_BYTE[usize::from(byte)];
        if lowered != 0 {
            hash = (hash ^ u64::from(lowered)).wrapping_mul(PRIME);
            in_token = true;
        } else if in_token {
            f(hash);
            hash = OFFSET;
            in_token = false;
        }
    }
    if in_token {
        f(hash);
    }
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

    /// The definition in the module docs, character by character (the implementation before
    /// the byte-wise one).
    fn tokens_by_chars(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = String::new();
        for ch in text.chars() {
            if ch.is_ascii_alphanumeric() || ch == '_' || !ch.is_ascii() {
                buf.push(ch.to_ascii_lowercase());
            } else if !buf.is_empty() {
                out.push(std::mem::take(&mut buf));
            }
        }
        if !buf.is_empty() {
            out.push(buf);
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn byte_wise_tokens_equal_the_definition(text in "(\\PC|[A-Za-z0-9_ ./:-]){0,40}") {
            let mut out = Vec::new();
            for_each_token(&text, |t| out.push(t.to_string()));
            proptest::prop_assert_eq!(out, tokens_by_chars(&text));
        }
    }

    proptest::proptest! {
        #[test]
        fn token_hashes_are_the_hashes_of_the_tokens(text in "(\\PC|[A-Za-z0-9_ ./:-]){0,60}") {
            let mut expected = Vec::new();
            for_each_token(&text, |t| expected.push(crate::ids::fnv1a64(t.as_bytes())));
            let mut hashes = Vec::new();
            for_each_token_hash(&text, |h| hashes.push(h));
            proptest::prop_assert_eq!(hashes, expected);
        }
    }

    #[test]
    fn token_hashes_of_a_known_text() {
        let mut hashes = Vec::new();
        for_each_token_hash("GET /Api_V1 Straße", |h| hashes.push(h));
        let expected: Vec<u64> = ["get", "api_v1", "straße"]
            .iter()
            .map(|t| crate::ids::fnv1a64(t.as_bytes()))
            .collect();
        assert_eq!(hashes, expected);
    }

    #[test]
    fn non_ascii_words_stay_whole() {
        let mut out = Vec::new();
        for_each_token("Échec: délai DÉPASSÉ (Straße)", |t| {
            out.push(t.to_string())
        });
        assert_eq!(out, ["Échec", "délai", "dÉpassÉ", "straße"]);
    }

    #[test]
    fn interior_tokens_drop_possibly_partial_edges() {
        assert_eq!(interior_tokens("upstream timeout after"), ["timeout"]);
        assert_eq!(interior_tokens(" timeout "), ["timeout"]);
        assert!(interior_tokens("timeout").is_empty());
    }
}
