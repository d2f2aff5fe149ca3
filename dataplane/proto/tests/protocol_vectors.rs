//! The byte-level test vectors of docs/protocol.md, read from the document itself so the
//! document and the code cannot drift apart.

use logcluster_proto::frame::{Ack, AckStatus, Format, FrameHeader, encode_frame};

fn vectors() -> Vec<Vec<u8>> {
    let doc = include_str!("../../../docs/protocol.md");
    let section = doc
        .split("## Test vectors")
        .nth(1)
        .expect("the document has a test vector section");
    section
        .split("```")
        .skip(1)
        .step_by(2)
        .map(|block| {
            block
                .split_whitespace()
                .map(|hex| u8::from_str_radix(hex, 16).expect("hex byte"))
                .collect()
        })
        .collect()
}

#[test]
fn documented_request_frames_match_the_encoder_and_parser() {
    let v = vectors();
    assert_eq!(v.len(), 4, "docs/protocol.md lists four vectors");
    assert_eq!(
        encode_frame(
            Format::Json,
            0x0102030405060708,
            "acme",
            b"{\"message\":\"hi\"}\n"
        ),
        v[0]
    );
    let header = FrameHeader::parse(&v[0], 1024)
        .expect("valid")
        .expect("complete");
    assert_eq!(
        (
            header.format,
            header.batch_id,
            header.tenant.as_str(),
            header.payload_len
        ),
        (Format::Json, 0x0102030405060708, "acme", 17)
    );
    assert_eq!(encode_frame(Format::Syslog, 0, "", b""), v[1]);
}

#[test]
fn documented_acks_match_the_encoder_and_parser() {
    let v = vectors();
    let accepted = Ack {
        status: AckStatus::Accepted,
        batch_id: 0x0102030405060708,
        accepted: 1,
        rejected: 0,
        duplicate: false,
        error: String::new(),
    };
    assert_eq!(accepted.encode(), v[2]);
    let partial = Ack {
        status: AckStatus::Partial,
        batch_id: 9,
        accepted: 1,
        rejected: 1,
        duplicate: false,
        error: "record 1: bad".into(),
    };
    assert_eq!(partial.encode(), v[3]);
    assert_eq!(Ack::parse(&v[3]), Ok(Some((partial, v[3].len()))));
}
