//! Tests of the query language: parsing, errors, printing round trip, matching and hints.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use logcluster_proto::tokens::for_each_token;
use logcluster_proto::{FieldValue, Level, LogEntry};
use logcluster_storage::segment::NeedleScope;
use proptest::prelude::*;

use super::*;

fn expr(input: &str) -> Expr {
    match parse(input) {
        Ok(Query { expr: Some(e), .. }) => e,
        other => panic!("{input:?} did not parse to an expression: {other:?}"),
    }
}

fn text(t: &str) -> Expr {
    Expr::Text(t.into())
}

fn field(name: &str, value: Value) -> Expr {
    Expr::Match {
        field: Field::from_name(name),
        value,
    }
}

fn exact(name: &str, v: &str) -> Expr {
    field(name, Value::Exact(v.into()))
}

fn error(input: &str) -> ParseError {
    match parse(input) {
        Err(e) => e,
        Ok(q) => panic!("{input:?} parsed but should not: {q:?}"),
    }
}

fn sample_entry() -> LogEntry {
    let mut fields = BTreeMap::new();
    fields.insert("duration_ms".into(), FieldValue::int(742));
    fields.insert("amount".into(), FieldValue::float(12.5));
    fields.insert("http.method".into(), FieldValue::str("GET"));
    fields.insert("db.table".into(), FieldValue::str("orders"));
    fields.insert("retry".into(), FieldValue::bool(true));
    fields.insert("latency".into(), FieldValue::str("17.25"));
    fields.insert(
        "tags".into(),
        FieldValue {
            kind: Some(logcluster_proto::field_value::Kind::Json(
                r#"["a","b"]"#.into(),
            )),
        },
    );
    fields.insert("empty".into(), FieldValue::str(""));
    LogEntry {
        id: "01HX-abc".into(),
        timestamp: 1_714_572_000_000_000_000,
        received_at: 1_714_572_000_100_000_000,
        tenant: "acme".into(),
        service: "payment".into(),
        level: Level::Error as i32,
        message: "Upstream TIMEOUT after 3000 ms calling stripe (attempt 2/3)".into(),
        host: "pay-7f-eu-1".into(),
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        fields,
    }
}

fn matches(input: &str, entry: &LogEntry) -> bool {
    parse(input)
        .unwrap_or_else(|e| panic!("{e}"))
        .matches(entry)
}

// ---------------------------------------------------------------- parser

#[test]
fn empty_and_blank_queries_match_everything() {
    for input in ["", "   ", "\t\n"] {
        let query = parse(input).expect("blank parses");
        assert_eq!(
            query,
            Query {
                expr: None,
                last: None
            }
        );
        assert!(query.matches(&sample_entry()));
    }
}

#[test]
fn explicit_and_implicit_and_build_the_same_tree() {
    let explicit = expr(r#"service:payment AND level:ERROR AND "timeout""#);
    let implicit = expr(r#"service:payment level:ERROR "timeout""#);
    let want = Expr::And(vec![
        exact("service", "payment"),
        field("level", Value::Level(CmpOp::Eq, Level::Error)),
        text("timeout"),
    ]);
    assert_eq!(explicit, want);
    assert_eq!(implicit, want);
    assert_eq!(
        expr("service:payment timeout"),
        Expr::And(vec![exact("service", "payment"), text("timeout")])
    );
}

#[test]
fn keywords_are_case_insensitive_and_precedence_is_not_and_or() {
    assert_eq!(
        expr("a or b and not c"),
        Expr::Or(vec![
            text("a"),
            Expr::And(vec![text("b"), Expr::Not(Box::new(text("c")))])
        ])
    );
    assert_eq!(
        expr("a OR b c OR d"),
        Expr::Or(vec![
            text("a"),
            Expr::And(vec![text("b"), text("c")]),
            text("d")
        ])
    );
    assert_eq!(
        expr("(a OR b) c"),
        Expr::And(vec![Expr::Or(vec![text("a"), text("b")]), text("c")])
    );
    // Words that merely start with a keyword are ordinary words.
    assert_eq!(
        expr("android order notice"),
        Expr::And(vec![text("android"), text("order"), text("notice")])
    );
}

#[test]
fn minus_prefix_is_not() {
    assert_eq!(expr("-debug"), Expr::Not(Box::new(text("debug"))));
    assert_eq!(
        expr(r#"-"health check" -host:canary-1 -(a b)"#),
        Expr::And(vec![
            Expr::Not(Box::new(text("health check"))),
            Expr::Not(Box::new(exact("host", "canary-1"))),
            Expr::Not(Box::new(Expr::And(vec![text("a"), text("b")]))),
        ])
    );
    assert_eq!(
        expr("NOT NOT x"),
        Expr::Not(Box::new(Expr::Not(Box::new(text("x")))))
    );
    // A dash inside a word is part of the word.
    assert_eq!(expr("pay-1"), text("pay-1"));
}

#[test]
fn words_and_phrases_are_lowercased_substring_needles() {
    assert_eq!(expr("TimeOut"), text("timeout"));
    assert_eq!(expr(r#""Upstream Timeout""#), text("upstream timeout"));
    assert_eq!(expr(r#""say \"hi\" \\ bye""#), text(r#"say "hi" \ bye"#));
    assert_eq!(expr(r#""a AND b""#), text("a and b"));
    assert_eq!(expr("message:Timeout"), exact("message", "timeout"));
}

#[test]
fn core_and_free_form_fields_are_recognised() {
    assert_eq!(
        expr("service:payment"),
        Expr::Match {
            field: Field::Service,
            value: Value::Exact("payment".into())
        }
    );
    assert_eq!(
        expr("trace_id:abc"),
        Expr::Match {
            field: Field::TraceId,
            value: Value::Exact("abc".into())
        }
    );
    assert_eq!(
        expr("tenant:acme"),
        Expr::Match {
            field: Field::Tenant,
            value: Value::Exact("acme".into())
        }
    );
    assert_eq!(
        expr("id:01HX"),
        Expr::Match {
            field: Field::Id,
            value: Value::Exact("01HX".into())
        }
    );
    assert_eq!(
        expr("host:\"a b\""),
        Expr::Match {
            field: Field::Host,
            value: Value::Exact("a b".into())
        }
    );
    assert_eq!(
        expr("http.method:GET"),
        Expr::Match {
            field: Field::Custom("http.method".into()),
            value: Value::Exact("GET".into())
        }
    );
    assert_eq!(expr("db.table:orders"), exact("db.table", "orders"));
    // Only the first colon separates the field from the value.
    assert_eq!(expr("url:http://x/y"), exact("url", "http://x/y"));
    // Capitalised core names are free-form fields (keys are case-sensitive).
    assert_eq!(
        expr("Service:x"),
        Expr::Match {
            field: Field::Custom("Service".into()),
            value: Value::Exact("x".into())
        }
    );
}

#[test]
fn level_values_accept_usual_spellings() {
    assert_eq!(
        expr("level:error"),
        field("level", Value::Level(CmpOp::Eq, Level::Error))
    );
    assert_eq!(
        expr("level:warning"),
        field("level", Value::Level(CmpOp::Eq, Level::Warn))
    );
    assert_eq!(
        expr("level:\"WARN\""),
        field("level", Value::Level(CmpOp::Eq, Level::Warn))
    );
    assert_eq!(
        expr("level:>=warn"),
        field("level", Value::Level(CmpOp::Ge, Level::Warn))
    );
    assert_eq!(
        expr("level:[info TO error]"),
        field("level", Value::LevelRange(Level::Info, Level::Error))
    );
}

#[test]
fn wildcards_and_exists_are_parsed_and_quotes_keep_them_literal() {
    assert_eq!(
        expr("service:pay*"),
        field("service", Value::Pattern("pay*".into()))
    );
    assert_eq!(
        expr("host:*-eu-?"),
        field("host", Value::Pattern("*-eu-?".into()))
    );
    assert_eq!(expr("trace_id:*"), field("trace_id", Value::Exists));
    assert_eq!(expr("host:\"*\""), exact("host", "*"));
    assert_eq!(expr("host:\"pay*\""), exact("host", "pay*"));
}

#[test]
fn numeric_comparisons_and_ranges_are_parsed() {
    assert_eq!(
        expr("duration_ms:>500"),
        field("duration_ms", Value::Compare(CmpOp::Gt, 500.0))
    );
    assert_eq!(
        expr("duration_ms:>=500"),
        field("duration_ms", Value::Compare(CmpOp::Ge, 500.0))
    );
    assert_eq!(
        expr("duration_ms:<500"),
        field("duration_ms", Value::Compare(CmpOp::Lt, 500.0))
    );
    assert_eq!(
        expr("duration_ms:<=500"),
        field("duration_ms", Value::Compare(CmpOp::Le, 500.0))
    );
    assert_eq!(
        expr("amount:=12.5"),
        field("amount", Value::Compare(CmpOp::Eq, 12.5))
    );
    assert_eq!(
        expr("delta:>-3.5e2"),
        field("delta", Value::Compare(CmpOp::Gt, -350.0))
    );
    assert_eq!(
        expr("duration_ms:[100 TO 500]"),
        field("duration_ms", Value::Range(100.0, 500.0))
    );
    assert_eq!(
        expr("duration_ms:[ 100  to 500 ]"),
        field("duration_ms", Value::Range(100.0, 500.0))
    );
    assert_eq!(
        expr("(duration_ms:[100 TO 500])"),
        field("duration_ms", Value::Range(100.0, 500.0))
    );
}

#[test]
fn last_is_lifted_into_a_time_hint() {
    let q = parse("last 15m").expect("parses");
    assert_eq!(
        q,
        Query {
            expr: None,
            last: Some(Duration::from_secs(900))
        }
    );
    let q = parse("service:payment LAST 2h timeout").expect("parses");
    assert_eq!(q.last, Some(Duration::from_secs(7200)));
    assert_eq!(
        q.expr,
        Some(Expr::And(vec![
            exact("service", "payment"),
            text("timeout")
        ]))
    );
    assert_eq!(
        parse("error last 1d").expect("parses").last,
        Some(Duration::from_secs(86_400))
    );
    assert_eq!(
        parse("last 30s x").expect("parses").last,
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        parse("last 1w").expect("parses").last,
        Some(Duration::from_secs(604_800))
    );
    // `last` not followed by a duration is an ordinary word.
    assert_eq!(
        expr("last call"),
        Expr::And(vec![text("last"), text("call")])
    );
    assert_eq!(expr("last"), text("last"));
}

// ---------------------------------------------------------------- errors

#[test]
fn unbalanced_parentheses_point_at_the_culprit() {
    let e = error("(level:ERROR OR level:FATAL");
    assert_eq!(e.position, 0);
    assert!(e.message.contains("unbalanced parenthesis"), "{e}");
    let e = error("a (b (c)");
    assert_eq!(e.position, 2);
    let e = error("a b) c");
    assert_eq!(e.position, 3);
    assert!(e.message.contains("without `(`"), "{e}");
    let e = error("a ()");
    assert_eq!(e.position, 2);
}

#[test]
fn dangling_operators_point_at_the_operator() {
    assert_eq!(error("a AND").position, 2);
    assert_eq!(error("a OR ").position, 2);
    assert_eq!(error("a AND OR b").position, 2);
    assert_eq!(error("AND a").position, 0);
    assert_eq!(error("OR b").position, 0);
    assert_eq!(error("NOT").position, 0);
    assert_eq!(error("(a NOT)").position, 3);
    assert_eq!(error("a -").position, 2);
    assert_eq!(error("a - b").position, 2);
    let e = error("a (b OR) c");
    assert_eq!(e.position, 5);
    assert!(e.message.contains("dangling operator"), "{e}");
}

#[test]
fn empty_values_point_after_the_colon() {
    let e = error("service: payment");
    assert_eq!(e.position, 8);
    assert!(e.message.contains("empty value"), "{e}");
    assert_eq!(error("service:").position, 8);
    assert_eq!(error("host:\"\"").position, 5);
    assert_eq!(error("x:>").position, 3);
    assert_eq!(error("\"\"").position, 0);
    assert_eq!(error("d:[ TO 5]").position, 4);
    assert_eq!(error("(service:)").position, 9);
}

#[test]
fn bad_numbers_and_levels_point_at_the_value() {
    let e = error("duration_ms:>fast");
    assert_eq!(e.position, 13);
    assert!(e.message.contains("bad number"), "{e}");
    assert_eq!(error("amount:=NaN").position, 8);
    assert_eq!(error("amount:<inf").position, 8);
    assert_eq!(error("d:[1 TO x]").position, 8);
    assert_eq!(error("d:[1 5]").position, 5);
    assert_eq!(error("d:[1 TO 5").position, 2);
    assert_eq!(error("d:[9 TO 5]").position, 2);
    let e = error("level:LOUD");
    assert_eq!(e.position, 6);
    assert!(e.message.contains("unknown level"), "{e}");
    assert_eq!(error("level:>=5").position, 8);
}

#[test]
fn unterminated_quotes_point_at_the_opening_quote() {
    let e = error(r#"service:payment "upstream timeout"#);
    assert_eq!(e.position, 16);
    assert_eq!(e.message, "unterminated quote");
    assert_eq!(error(r#"host:"a\""#).position, 5);
    assert_eq!(error(r#""abc\"#).position, 0);
}

#[test]
fn misplaced_or_bad_last_is_rejected() {
    assert_eq!(error("a OR last 1h").position, 5);
    assert_eq!(error("(last 1h)").position, 1);
    assert_eq!(error("NOT last 1h").position, 4);
    assert_eq!(error("last 1h x last 2h").position, 10);
    assert_eq!(error("last 0m").position, 5);
    assert_eq!(error("last 99999999999999999999d").position, 5);
}

#[test]
fn hostile_nesting_is_an_error_not_a_stack_overflow() {
    let deep = format!("{}a{}", "(".repeat(100_000), ")".repeat(100_000));
    let e = error(&deep);
    assert_eq!(e.position, MAX_DEPTH);
    assert!(e.message.contains("nests deeper"), "{}", e.message);
    assert_eq!(error(&"NOT ".repeat(100_000)).position, 4 * MAX_DEPTH);
    assert_eq!(error(&"-".repeat(100_000)).position, MAX_DEPTH);
    let fine = format!(
        "{}a OR b{}",
        "(".repeat(MAX_DEPTH - 2),
        ")".repeat(MAX_DEPTH - 2)
    );
    let query = parse(&fine).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(query.to_string(), "a OR b");
}

#[test]
fn error_display_draws_a_caret_under_the_position() {
    let e = error("level:ERROR AND (host:a OR");
    let rendered = e.to_string();
    let lines: Vec<&str> = rendered.lines().collect();
    assert_eq!(lines.len(), 3, "{rendered}");
    assert!(lines[0].starts_with("dangling operator"), "{rendered}");
    assert_eq!(lines[1], "  level:ERROR AND (host:a OR");
    assert_eq!(lines[2], format!("  {}^", " ".repeat(24)));
    // Columns count characters, not bytes.
    let e = error("é -");
    assert_eq!(e.position, 3);
    assert!(e.to_string().ends_with("\n  é -\n    ^"), "{e}");
}

// ---------------------------------------------------------------- printing

#[test]
fn printing_is_canonical() {
    let cases = [
        (
            "service:payment level:error \"timeout\"",
            "service:payment AND level:ERROR AND timeout",
        ),
        ("a or (b c) or -d", "a OR b AND c OR NOT d"),
        ("(a OR b) c", "(a OR b) AND c"),
        ("a (b c)", "a AND (b AND c)"),
        ("NOT (a OR b)", "NOT (a OR b)"),
        (
            "\"upstream timeout\" \"and\" \"-x\" \"a:b\"",
            "\"upstream timeout\" AND \"and\" AND \"-x\" AND \"a:b\"",
        ),
        (
            "host:\"a b\" host:\"*\" host:\">1\" host:*-eu-?",
            "host:\"a b\" AND host:\"*\" AND host:\">1\" AND host:*-eu-?",
        ),
        (
            "d:[100 TO 500] a:=12.5 level:>=warn",
            "d:[100 TO 500] AND a:=12.5 AND level:>=WARN",
        ),
        ("x (a OR b) last 90m", "last 90m AND x AND (a OR b)"),
        ("(a OR b) last 3600s", "last 1h AND (a OR b)"),
        ("last 90s", "last 90s"),
    ];
    for (input, want) in cases {
        let query = parse(input).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(query.to_string(), want, "printing {input:?}");
        assert_eq!(parse(want).ok(), Some(query), "reparsing {want:?}");
    }
}

fn arb_level() -> impl Strategy<Value = Level> {
    prop::sample::select(Level::ALL.to_vec())
}

fn arb_op() -> impl Strategy<Value = CmpOp> {
    prop::sample::select(CmpOp::ALL.to_vec())
}

fn arb_number() -> impl Strategy<Value = f64> {
    prop_oneof![
        (-100_000i64..100_000).prop_map(|n| n as f64),
        -1e6f64..1e6,
        Just(0.1),
        Just(-2.5e-7)
    ]
}

fn arb_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9_.:/-]{1,10}",
        "[ -~]{1,10}",
        "[a-z \"\\\\()*?é日]{1,8}",
    ]
}

fn arb_pattern() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_.-]{0,3}[*?][a-zA-Z0-9_.*?-]{0,4}".prop_filter("bare * means exists", |p| p != "*")
}

fn arb_field() -> impl Strategy<Value = Field> {
    prop_oneof![
        Just(Field::Service),
        Just(Field::Host),
        Just(Field::Tenant),
        Just(Field::TraceId),
        Just(Field::Message),
        Just(Field::Id),
        "[a-z@_][a-zA-Z0-9_@-]{0,5}(\\.[a-z]{1,4})?"
            .prop_map(|n| Field::from_name(&n))
            .prop_filter("free-form", |f| matches!(f, Field::Custom(_))),
    ]
}

fn arb_match() -> impl Strategy<Value = Expr> {
    let level = prop_oneof![
        (arb_op(), arb_level()).prop_map(|(op, l)| Value::Level(op, l)),
        (arb_level(), arb_level()).prop_map(|(a, b)| Value::LevelRange(a.min(b), a.max(b))),
        Just(Value::Exists),
        arb_pattern().prop_map(Value::Pattern),
    ]
    .prop_map(|value| Expr::Match {
        field: Field::Level,
        value,
    });
    let other = (
        arb_field(),
        prop_oneof![
            arb_string().prop_map(Value::Exact),
            arb_pattern().prop_map(Value::Pattern),
            Just(Value::Exists),
            (arb_op(), arb_number()).prop_map(|(op, n)| Value::Compare(op, n)),
            (arb_number(), arb_number()).prop_map(|(a, b)| Value::Range(a.min(b), a.max(b))),
        ],
    )
        .prop_map(|(field, value)| {
            let value = match (&field, value) {
                (Field::Message, Value::Exact(s)) => Value::Exact(s.to_lowercase()),
                (_, value) => value,
            };
            Expr::Match { field, value }
        });
    prop_oneof![level, other]
}

fn arb_expr() -> impl Strategy<Value = Expr> {
    let leaf = prop_oneof![
        arb_string().prop_map(|s| Expr::Text(s.to_lowercase())),
        arb_match()
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| Expr::Not(Box::new(e))),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::And),
            prop::collection::vec(inner, 2..4).prop_map(Expr::Or),
        ]
    })
}

fn arb_query() -> impl Strategy<Value = Query> {
    (
        prop::option::of(arb_expr()),
        prop::option::of(prop_oneof![
            1u64..200,
            (1u64..50).prop_map(|n| n * 3600),
            (1u64..9).prop_map(|n| n * 86_400)
        ]),
    )
        .prop_map(|(expr, last)| Query {
            expr,
            last: last.map(Duration::from_secs),
        })
}

proptest! {
    #[test]
    fn printed_queries_parse_back_to_the_same_tree(query in arb_query()) {
        let printed = query.to_string();
        let reparsed = parse(&printed);
        prop_assert_eq!(reparsed.as_ref().ok(), Some(&query), "printed as {:?}: {:?}", printed, reparsed);
    }

    #[test]
    fn arbitrary_input_never_panics(input in "[ -~é]{0,40}") {
        match parse(&input) {
            Ok(query) => {
                let again = parse(&query.to_string());
                prop_assert_eq!(again.ok(), Some(query));
            }
            Err(e) => prop_assert!(e.position <= input.len()),
        }
    }
}

// ---------------------------------------------------------------- matching

#[test]
fn free_text_is_a_case_insensitive_message_substring() {
    let entry = sample_entry();
    assert!(matches("timeout", &entry));
    assert!(matches("TIMEOUT", &entry));
    assert!(matches("\"upstream timeout after\"", &entry));
    assert!(matches("stream", &entry));
    assert!(matches("message:\"ATTEMPT 2/3\"", &entry));
    assert!(!matches("\"timeout before\"", &entry));
    assert!(!matches("paypal", &entry));
    // Free text looks at the message only, not the host.
    assert!(!matches("eu", &entry));
    let unicode = LogEntry {
        message: "Ошибка: ÉCHEC du paiement".into(),
        ..Default::default()
    };
    assert!(matches("ошибка", &unicode));
    assert!(matches("\"échec du\"", &unicode));
    assert!(!matches("succès", &unicode));
}

#[test]
fn boolean_operators_combine_predicates() {
    let entry = sample_entry();
    assert!(matches(
        "service:payment AND level:ERROR AND \"timeout\"",
        &entry
    ));
    assert!(matches("service:billing OR timeout", &entry));
    assert!(!matches("service:billing OR paypal", &entry));
    assert!(!matches("NOT timeout", &entry));
    assert!(matches("-paypal timeout", &entry));
    assert!(matches(
        "(service:billing OR service:payment) -(level:INFO OR level:DEBUG)",
        &entry
    ));
}

#[test]
fn keyword_fields_compare_exactly_and_case_sensitively() {
    let entry = sample_entry();
    assert!(matches("service:payment", &entry));
    assert!(!matches("service:Payment", &entry));
    assert!(!matches("service:pay", &entry));
    assert!(matches("host:pay-7f-eu-1", &entry));
    assert!(matches("tenant:acme", &entry));
    assert!(matches("id:01HX-abc", &entry));
    assert!(matches("trace_id:4bf92f3577b34da6a3ce929d0e0e4736", &entry));
    assert!(!matches("trace_id:4bf92f", &entry));
    assert!(matches("http.method:GET", &entry));
    assert!(!matches("http.method:get", &entry));
    assert!(matches("db.table:orders", &entry));
    assert!(matches("host:\"pay-7f-eu-1\"", &entry));
    assert!(!matches("missing.field:x", &entry));
}

#[test]
fn level_matches_names_case_insensitively_and_by_severity() {
    let entry = sample_entry();
    for yes in [
        "level:ERROR",
        "level:error",
        "level:err",
        "level:>=WARN",
        "level:>warning",
        "level:<=error",
        "level:[WARN TO FATAL]",
        "level:*",
        "level:E*",
        "level:e?ror",
    ] {
        assert!(matches(yes, &entry), "{yes}");
    }
    for no in [
        "level:WARN",
        "level:<ERROR",
        "level:>error",
        "level:[TRACE TO WARN]",
        "level:w*",
    ] {
        assert!(!matches(no, &entry), "{no}");
    }
    let unspecified = LogEntry::default();
    assert!(!matches("level:*", &unspecified));
    assert!(matches("level:unspecified", &unspecified));
}

#[test]
fn wildcards_match_the_whole_value() {
    let entry = sample_entry();
    assert!(matches("service:pay*", &entry));
    assert!(matches("service:*ment", &entry));
    assert!(matches("service:p?yment", &entry));
    assert!(!matches("service:Pay*", &entry));
    assert!(!matches("service:pay", &entry));
    assert!(matches("host:*-eu-?", &entry));
    assert!(!matches("host:*-us-?", &entry));
    assert!(matches("db.table:ord*", &entry));
    assert!(matches("duration_ms:7*", &entry));
    assert!(matches("tags:*b*", &entry));
    assert!(matches("message:upstream*attempt*", &entry));
    assert!(!matches("message:timeout*", &entry));
    let unicode = LogEntry {
        service: "zahlungsdienst-ü".into(),
        ..Default::default()
    };
    assert!(matches("service:zahlungsdienst-?", &unicode));
    assert!(!matches("service:zahlungsdienst-??", &unicode));
}

#[test]
fn exists_requires_a_present_non_empty_field() {
    let entry = sample_entry();
    assert!(matches("trace_id:*", &entry));
    assert!(matches("duration_ms:*", &entry));
    assert!(matches("retry:*", &entry));
    assert!(!matches("empty:*", &entry));
    assert!(!matches("missing:*", &entry));
    assert!(!matches("trace_id:*", &LogEntry::default()));
}

#[test]
fn numeric_comparisons_use_field_numbers() {
    let entry = sample_entry();
    assert!(matches("duration_ms:>500", &entry));
    assert!(!matches("duration_ms:>742", &entry));
    assert!(matches("duration_ms:>=742", &entry));
    assert!(matches("duration_ms:<1000", &entry));
    assert!(matches("duration_ms:<=742", &entry));
    assert!(matches("duration_ms:[100 TO 742]", &entry));
    assert!(!matches("duration_ms:[100 TO 500]", &entry));
    assert!(matches("amount:=12.5", &entry));
    assert!(matches("amount:12.50", &entry));
    assert!(matches("duration_ms:742", &entry));
    assert!(matches("latency:>17", &entry));
    assert!(matches("retry:true", &entry));
    assert!(!matches("retry:false", &entry));
    assert!(!matches("db.table:>1", &entry));
    assert!(!matches("missing:>1", &entry));
}

#[test]
fn json_fields_equal_only_their_json_text() {
    let entry = sample_entry();
    assert!(matches(r#"tags:"[\"a\",\"b\"]""#, &entry));
    assert!(!matches("tags:a", &entry));
}

// ---------------------------------------------------------------- hints

fn hints(input: &str) -> Hints {
    parse(input).unwrap_or_else(|e| panic!("{e}")).hints()
}

fn set(items: &[&str]) -> Option<BTreeSet<String>> {
    Some(items.iter().map(|s| s.to_string()).collect())
}

fn mask(levels: &[Level]) -> Option<u8> {
    Some(levels.iter().fold(0u8, |m, l| m | (1 << (*l as i32))))
}

#[test]
fn conjunctions_collect_services_levels_and_tokens() {
    let h =
        hints(r#"service:payment AND level:ERROR AND "upstream timeout after" host:pay-7f-eu-1"#);
    assert_eq!(h.services, set(&["payment"]));
    assert_eq!(h.levels, mask(&[Level::Error]));
    assert_eq!(h.required_tokens, ["1", "7f", "eu", "pay", "timeout"]);
    let h = hints("level:>=WARN level:<=ERROR");
    assert_eq!(h.levels, mask(&[Level::Warn, Level::Error]));
    assert_eq!(hints("service:a service:b").services, set(&[]));
    assert_eq!(
        hints("trace_id:4bf92f35-77b3").required_tokens,
        ["4bf92f35", "77b3"]
    );
    assert_eq!(hints("db.table:orders").required_tokens, ["orders"]);
    assert_eq!(hints("level:*").levels, Some(0b111_1110));
    assert_eq!(hints("level:w*").levels, mask(&[Level::Warn]));
}

#[test]
fn record_needles_come_from_substrings_and_exact_string_values() {
    let needle = |input: &str| hints(input).record_needle;
    let scoped = |text: &str, scope| Some((text.to_string(), scope));
    assert_eq!(needle("Timeout"), scoped("timeout", NeedleScope::Message));
    assert_eq!(
        needle("message:Upstream"),
        scoped("upstream", NeedleScope::Message)
    );
    assert_eq!(
        needle("service:api AND trace_id:C662dcc5f3 AND timeout"),
        scoped("c662dcc5f3", NeedleScope::TraceId)
    );
    assert_eq!(
        needle("host:web-1 AND x"),
        scoped("web-1", NeedleScope::Host)
    );
    assert_eq!(
        needle("db.table:orders"),
        scoped("orders", NeedleScope::Record)
    );
    // Numbers, booleans, alternatives, negations and non-ASCII text promise no bytes.
    for input in [
        "http.status:500",
        "ok:true",
        "a OR b",
        "NOT timeout",
        "\"échec\"",
        "level:ERROR",
    ] {
        assert_eq!(hints(input).record_needle, None, "{input}");
    }
}

#[test]
fn substrings_only_promise_interior_tokens() {
    assert!(hints("timeout").required_tokens.is_empty());
    assert!(hints("\"upstream timeout\"").required_tokens.is_empty());
    assert_eq!(hints("\" timeout \"").required_tokens, ["timeout"]);
    assert_eq!(
        hints("message:\"calling stripe (attempt\"").required_tokens,
        ["stripe"]
    );
    assert_eq!(hints("host:*-eu-west-?").required_tokens, ["eu", "west"]);
    assert!(hints("\"échec du paiement\"").required_tokens.is_empty());
}

#[test]
fn disjunctions_and_negations_stay_conservative() {
    let h = hints("service:payment OR service:billing");
    assert_eq!(h.services, set(&["billing", "payment"]));
    let h = hints("service:payment OR timeout");
    assert_eq!(h.services, None);
    let h = hints("level:ERROR OR level:FATAL");
    assert_eq!(h.levels, mask(&[Level::Error, Level::Fatal]));
    assert_eq!(hints("level:ERROR OR x").levels, None);
    let h = hints("\" a b \" OR \" b c \"");
    assert_eq!(h.required_tokens, ["b"]);
    let h = hints("NOT service:payment NOT level:ERROR -host:a-b");
    assert_eq!(h, Hints::default());
    assert_eq!(hints("service:pay*").services, None);
}

#[test]
fn values_that_could_be_unindexed_promise_no_tokens() {
    for input in [
        "status:502",
        "amount:12.5",
        "retry:true",
        "tags:null",
        "tags:\"[1, 2]\"",
        "x:>5",
        "x:*",
        "x:a*b-c",
    ] {
        assert!(hints(input).required_tokens.is_empty(), "{input}");
    }
    // Core fields other than host and trace_id are not token-indexed.
    for input in ["service:my-svc", "tenant:a-b", "id:x-y"] {
        assert!(hints(input).required_tokens.is_empty(), "{input}");
    }
}

/// The tokens storage indexes for an entry (message, host, trace id, string field values).
fn indexed_tokens(entry: &LogEntry) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut add = |t: &str| {
        out.insert(t.to_string());
    };
    for_each_token(&entry.message, &mut add);
    for_each_token(&entry.host, &mut add);
    for_each_token(&entry.trace_id, &mut add);
    for value in entry.fields.values() {
        if let Some(logcluster_proto::field_value::Kind::Str(s)) = &value.kind {
            for_each_token(s, &mut add);
        }
    }
    out
}

const WORDS: &[&str] = &[
    "upstream",
    "Timeout",
    "timeout",
    "db-1",
    "ok",
    "K",
    "é",
    "Échec",
    "\u{212A}b",
    "İd",
    "502",
    "a b",
    "pay-1",
];

fn arb_words() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(WORDS), 0..4).prop_map(|w| w.join(" "))
}

fn arb_entry() -> impl Strategy<Value = LogEntry> {
    (
        prop::sample::select(vec!["payment", "billing", "pay-eu", ""]),
        0i32..7,
        arb_words(),
        prop::sample::select(vec!["pay-1", "pay-2", "db-eu-1", ""]),
        prop::sample::select(vec!["", "abc-def"]),
        prop::option::of(0i64..1000),
        prop::option::of(arb_words()),
        prop::option::of(any::<bool>()),
    )
        .prop_map(
            |(service, level, message, host, trace_id, status, method, flag)| {
                let mut fields = BTreeMap::new();
                if let Some(status) = status {
                    fields.insert("status".to_string(), FieldValue::int(status));
                }
                if let Some(method) = method {
                    fields.insert("method".to_string(), FieldValue::str(method));
                }
                if let Some(flag) = flag {
                    fields.insert("flag".to_string(), FieldValue::bool(flag));
                }
                fields.insert(
                    "tags".to_string(),
                    FieldValue {
                        kind: Some(logcluster_proto::field_value::Kind::Json("[\"ok\"]".into())),
                    },
                );
                LogEntry {
                    service: service.into(),
                    level,
                    message,
                    host: host.into(),
                    trace_id: trace_id.into(),
                    fields,
                    ..Default::default()
                }
            },
        )
}

fn arb_vocab_expr() -> impl Strategy<Value = Expr> {
    let value_text = prop_oneof![
        arb_words(),
        prop::sample::select(vec!["502", "true", "[\"ok\"]", " ok ", "ok db"])
            .prop_map(String::from)
    ];
    let leaf = prop_oneof![
        arb_words()
            .prop_filter("non-empty", |w| !w.is_empty())
            .prop_map(|w| Expr::Text(w.to_lowercase())),
        (
            prop::sample::select(vec![
                "service", "host", "trace_id", "message", "method", "status", "flag", "tags"
            ]),
            prop_oneof![
                value_text.prop_map(Value::Exact),
                prop::sample::select(vec!["pay*", "*-?", "*ok*", "*a b*", "?ay-1", "*timeout*"])
                    .prop_map(|p| Value::Pattern(p.into())),
                Just(Value::Exists),
                (arb_op(), 0i64..1000).prop_map(|(op, n)| Value::Compare(op, n as f64)),
            ],
        )
            .prop_filter(
                "non-empty exact",
                |(_, v)| !matches!(v, Value::Exact(s) if s.is_empty())
            )
            .prop_map(|(name, value)| {
                let field = Field::from_name(name);
                let value = match (&field, value) {
                    (Field::Message, Value::Exact(s)) => Value::Exact(s.to_lowercase()),
                    (_, value) => value,
                };
                Expr::Match { field, value }
            }),
        prop_oneof![
            (arb_op(), arb_level()).prop_map(|(op, l)| Value::Level(op, l)),
            Just(Value::Exists),
            Just(Value::Pattern("*r*".into())),
        ]
        .prop_map(|value| Expr::Match {
            field: Field::Level,
            value
        }),
    ];
    leaf.prop_recursive(3, 16, 3, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| Expr::Not(Box::new(e))),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::And),
            prop::collection::vec(inner, 2..4).prop_map(Expr::Or),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_match_satisfies_the_hints(expr in arb_vocab_expr(), entries in prop::collection::vec(arb_entry(), 1..16)) {
        let query = Query { expr: Some(expr), last: None };
        let hints = query.hints();
        if hints.core_and_message_only {
            // Matching does not depend on host, trace id or fields.
            for entry in &entries {
                let core = LogEntry {
                    host: String::new(),
                    trace_id: String::new(),
                    fields: BTreeMap::new(),
                    ..entry.clone()
                };
                prop_assert_eq!(query.matches(&core), query.matches(entry), "{:?} on {:?}", query, entry);
            }
        }
        for entry in entries.iter().filter(|e| query.matches(e)) {
            if let Some(services) = &hints.services {
                prop_assert!(services.contains(&entry.service), "service {:?} not in {:?}", entry.service, services);
            }
            if let Some(levels) = hints.levels {
                prop_assert!(levels & (1 << entry.level) != 0, "level {} not in {:#b}", entry.level, levels);
            }
            let tokens = indexed_tokens(entry);
            for token in &hints.required_tokens {
                prop_assert!(tokens.contains(token), "token {:?} missing from {:?} ({:?})", token, tokens, entry);
            }
            if let Some((needle, scope)) = &hints.record_needle {
                let record = prost::Message::encode_to_vec(entry);
                let holder: &[u8] = match scope {
                    NeedleScope::Record => &record,
                    NeedleScope::Message => entry.message.as_bytes(),
                    NeedleScope::Host => entry.host.as_bytes(),
                    NeedleScope::TraceId => entry.trace_id.as_bytes(),
                };
                prop_assert!(
                    logcluster_storage::segment::contains_ignore_ascii_case(holder, needle.as_bytes()),
                    "needle {:?} missing from the {:?} of {:?}", needle, scope, entry
                );
            }

        }
    }
}

/// Integer fields equal integers exactly, past the 2^53 an f64 holds (snowflake-style ids).
#[test]
fn large_integer_fields_match_exactly() {
    let mut entry = sample_entry();
    entry.fields.insert(
        "order_id".into(),
        FieldValue::int(1_234_567_890_123_456_789),
    );
    assert!(matches("order_id:1234567890123456789", &entry));
    assert!(!matches("order_id:1234567890123456790", &entry));
    assert!(!matches("order_id:1234567890123456788", &entry));
    // Whole numbers written as decimals still equal the integer.
    assert!(matches("duration_ms:742.0", &entry));
    assert!(!matches("duration_ms:742.5", &entry));
}
