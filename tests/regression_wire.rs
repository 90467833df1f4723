//! Regressions in reading request bytes, against the real binary: every handler kind treats
//! the same bytes the same way (`echo` and wire-read replies as the decoder that `rules` use),
//! and decoding a request costs memory in proportion to `--max-message-size`.

mod common;

use bytes::Bytes;
use common::{fixtures, Client, RawCodec, Server};
use prost_reflect::DynamicMessage;
use serde_json::json;
use tonic::codec::CompressionEncoding;
use tonic::{Code, Request, Status};

fn wire_server(extra: &[&str]) -> Server {
    let dir = fixtures().join("wire");
    common::start_folders(&dir.join("protos"), &dir.join("handlers"), extra)
}

async fn connect(server: &Server) -> Client {
    Client::connect(server.addr, common::pool(&fixtures().join("wire/protos"))).await
}

/// Sends `bytes` as the request of `method` and decodes the response as `output`.
async fn call(client: &Client, method: &str, bytes: &[u8]) -> Result<DynamicMessage, Status> {
    let out = client.method(method).output();
    let resp = client
        .raw_unary(&format!("/{method}"), Bytes::copy_from_slice(bytes))
        .await?;
    Ok(DynamicMessage::decode(out, resp).expect("response decodes"))
}

fn text_of(msg: &DynamicMessage, field: &str) -> String {
    msg.get_field_by_name(field)
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// i32 = 5, then an unknown group 90 holding an unknown group 91 with a varint, then s = "k".
const WITH_UNKNOWN_GROUP: &[u8] = &[
    0x08, 5, 0xd3, 0x05, 0xdb, 0x05, 0x08, 1, 0xdc, 0x05, 0xd4, 0x05, 0x72, 1, b'k',
];

#[tokio::test]
async fn echo_accepts_unknown_group_like_decoder() {
    let server = wire_server(&[]);
    let client = connect(&server).await;
    let echoed = client
        .raw_unary("/wire3.Wire3/Echo", Bytes::from_static(WITH_UNKNOWN_GROUP))
        .await
        .expect("echo accepts an unknown group");
    assert_eq!(
        &echoed[..],
        WITH_UNKNOWN_GROUP,
        "echo returns the bytes as sent"
    );
    // The decoder accepts the same bytes.
    let decoded = call(&client, "wire3.Wire3/Decoded", WITH_UNKNOWN_GROUP)
        .await
        .unwrap();
    assert_eq!(text_of(&decoded, "text"), "|0|0||0|k|5");
}

#[tokio::test]
async fn reply_constant_accepts_unknown_group() {
    let server = wire_server(&[]);
    let client = connect(&server).await;
    let r = call(&client, "wire3.Wire3/Constant", WITH_UNKNOWN_GROUP)
        .await
        .expect("a constant reply accepts an unknown group");
    assert_eq!(text_of(&r, "text"), "constant");
    let r = call(&client, "wire3.Wire3/Text", WITH_UNKNOWN_GROUP)
        .await
        .expect("a text reply accepts an unknown group");
    assert_eq!(text_of(&r, "text"), "|0|0||0|k|5");
}

#[tokio::test]
async fn text_reply_reads_oneof_last_member_wins() {
    let server = wire_server(&[]);
    let client = connect(&server).await;
    let cases: &[(&[u8], &str)] = &[
        // a = "x", then n = 5: n wins, a reads "".
        (&[0x9a, 0x01, 1, b'x', 0xa0, 0x01, 5], "|5|0||0||0"),
        // a = "", then n = 5.
        (&[0x9a, 0x01, 0, 0xa0, 0x01, 5], "|5|0||0||0"),
        // n = 5, then a = "x": a wins, n reads 0.
        (&[0xa0, 0x01, 5, 0x9a, 0x01, 1, b'x'], "x|0|0||0||0"),
        // m = {x: 1}, n = 2, m = {label: "l"}: m was cleared in between, so m.x reads 0.
        (
            &[
                0xaa, 0x01, 2, 0x08, 1, 0xa0, 0x01, 2, 0xaa, 0x01, 3, 0x12, 1, b'l',
            ],
            "|0|0||0||0",
        ),
        // m = {x: 1}, m = {label: "l"}: occurrences merge, m.x stays 1.
        (
            &[0xaa, 0x01, 2, 0x08, 1, 0xaa, 0x01, 3, 0x12, 1, b'l'],
            "|0|1||0||0",
        ),
        // inner = {z: 3}, inner = {raw: ""}: inside inner, raw clears z.
        (
            &[0x8a, 0x01, 2, 0x20, 6, 0x8a, 0x01, 2, 0x2a, 0],
            "|0|0||0||0",
        ),
    ];
    for (bytes, expected) in cases {
        let wire = call(&client, "wire3.Wire3/Text", bytes).await.unwrap();
        let decoded = call(&client, "wire3.Wire3/Decoded", bytes).await.unwrap();
        assert_eq!(text_of(&decoded, "text"), *expected, "decoded {bytes:02x?}");
        assert_eq!(text_of(&wire, "text"), *expected, "wire {bytes:02x?}");
    }
}

#[tokio::test]
async fn text_reply_reads_proto2_group_field() {
    let server = wire_server(&[]);
    let client = connect(&server).await;
    // result { url: "u", rank: 4 }, id = 3, color = 9 (not a declared value).
    let bytes = [0x1b, 0x22, 1, b'u', 0x28, 4, 0x1c, 0x08, 3, 0x50, 9];
    let wire = call(&client, "wire2.Wire2/Text", &bytes).await.unwrap();
    let decoded = call(&client, "wire2.Wire2/Decoded", &bytes).await.unwrap();
    assert_eq!(text_of(&decoded, "name"), "u|4|3|anon|9|anon");
    assert_eq!(text_of(&wire, "name"), "u|4|3|anon|9|anon");
    let echoed = client
        .raw_unary("/wire2.Wire2/Echo", Bytes::copy_from_slice(&bytes))
        .await
        .expect("echo accepts a proto2 group");
    assert_eq!(&echoed[..], &bytes);
    // Unset, the fields read their proto2 defaults.
    let wire = call(&client, "wire2.Wire2/Text", &[]).await.unwrap();
    assert_eq!(text_of(&wire, "name"), "|0|7|anon|BLUE|anon");
}

#[tokio::test]
async fn map_field_reads_like_decoder_whatever_its_wire_type() {
    let server = wire_server(&[]);
    let client = connect(&server).await;
    // by_id (a map, field 28) sent with wire type 0: the decoder still reads `02 08 07` as a
    // two-byte entry {key: 7}; it is not field i32 = 7 at the top.
    let bytes = [0xe0, 0x01, 2, 0x08, 7];
    let decoded = call(&client, "wire3.Wire3/Decoded", &bytes).await.unwrap();
    assert_eq!(text_of(&decoded, "text"), "|0|0||0||0");
    let wire = call(&client, "wire3.Wire3/Text", &bytes).await.unwrap();
    assert_eq!(text_of(&wire, "text"), "|0|0||0||0");
    client
        .raw_unary("/wire3.Wire3/Echo", Bytes::copy_from_slice(&bytes))
        .await
        .expect("echo accepts what the decoder accepts");
}

#[tokio::test]
async fn every_kind_refuses_key_over_32_bits_like_decoder() {
    let server = wire_server(&[]);
    let client = connect(&server).await;
    // A key of 2^32 + 8: field number 2^29 + 1 would fit 32 bits, the key does not.
    let bytes = [0x88, 0x80, 0x80, 0x80, 0x10, 0];
    for method in [
        "wire3.Wire3/Echo",
        "wire3.Wire3/Constant",
        "wire3.Wire3/Text",
        "wire3.Wire3/Decoded",
    ] {
        let err = client
            .raw_unary(&format!("/{method}"), Bytes::copy_from_slice(&bytes))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{method}: {err:?}");
        assert!(err.message().contains("wire3.All"), "{method}: {err:?}");
    }
}

#[tokio::test]
async fn echo_checks_extensions_like_decoder() {
    let server = wire_server(&[]);
    let client = connect(&server).await;
    // ext_n (extension 100, an int32) sent as a fixed32.
    let bytes = [0xa5, 0x06, 1, 2, 3, 4];
    for method in [
        "wire2.Wire2/Echo",
        "wire2.Wire2/Text",
        "wire2.Wire2/Decoded",
    ] {
        let err = client
            .raw_unary(&format!("/{method}"), Bytes::copy_from_slice(&bytes))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{method}: {err:?}");
    }
    // Sent as a varint it is fine everywhere.
    let ok = [0xa0, 0x06, 1];
    for method in [
        "wire2.Wire2/Echo",
        "wire2.Wire2/Text",
        "wire2.Wire2/Decoded",
    ] {
        client
            .raw_unary(&format!("/{method}"), Bytes::copy_from_slice(&ok))
            .await
            .unwrap_or_else(|e| panic!("{method}: {e:?}"));
    }
}

/// Peak resident memory of a process, in bytes.
fn peak_rss(pid: u32) -> usize {
    common::proc_status_kib(pid, "VmHWM") as usize * 1024
}

/// A unary call whose body is `raw`, gzip-compressed on the way.
async fn gzip_call(client: &Client, method: &str, raw: Bytes) -> Result<Bytes, Status> {
    let mut grpc = tonic::client::Grpc::new(client.channel.clone())
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(usize::MAX);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let resp = grpc
        .unary(
            Request::new(raw),
            format!("/{method}").parse().unwrap(),
            RawCodec,
        )
        .await?;
    Ok(resp.into_inner())
}

/// `packed_i32` (field 22) holding `n` one-byte varints.
fn packed_ones(n: usize) -> Bytes {
    let mut body = vec![0xb2, 0x01];
    prost::encoding::encode_varint(n as u64, &mut body);
    body.resize(body.len() + n, 1);
    Bytes::from(body)
}

/// A gzip request that inflates to almost 4 MiB of packed one-byte varints would decode into
/// four million `Value`s (over 200 MB). It is refused before decoding, with the field named,
/// and the server's peak memory grows by far less; normal large requests still work.
#[tokio::test]
async fn packed_varint_bomb_is_bounded() {
    /// Room for the inflated message (4 MiB), its buffers and the response, and nothing near
    /// the 200 MB the decoded form would take.
    const BOUND: usize = 64 * 1024 * 1024;
    let server = wire_server(&[]);
    let client = connect(&server).await;
    // Warm up: connection, buffers, one decoded call.
    let small = call(&client, "wire3.Wire3/Count", &[0x08, 3, 0x72, 1, b'x'])
        .await
        .unwrap();
    assert_eq!(text_of(&small, "text"), "x");

    let bomb = packed_ones(4 * 1024 * 1024 - 16);
    let before = peak_rss(server.pid());
    for method in ["wire3.Wire3/Count", "wire3.Wire3/Decoded"] {
        let err = gzip_call(&client, method, bomb.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{method}: {err:?}");
        assert!(
            err.message().contains("wire3.All.packed_i32"),
            "{method}: {err:?}"
        );
        assert!(err.message().contains("--max-message-size"), "{err:?}");
    }
    let grown = peak_rss(server.pid()).saturating_sub(before);
    eprintln!(
        "peak RSS grew by {} KiB for the refused requests",
        grown / 1024
    );
    assert!(
        grown < BOUND,
        "peak RSS grew by {} MiB",
        grown / (1024 * 1024)
    );

    // Echo, a constant reply and a text reply read from the wire never decode, so the same
    // bytes are fine for them (`Count`, a typed copy, decodes: refused above).
    let echoed = gzip_call(&client, "wire3.Wire3/Echo", bomb.clone())
        .await
        .unwrap();
    assert_eq!(echoed.len(), bomb.len());
    let constant = gzip_call(&client, "wire3.Wire3/Constant", bomb.clone())
        .await
        .unwrap();
    let out = client.method("wire3.Wire3/Constant").output();
    let constant = DynamicMessage::decode(out.clone(), constant).unwrap();
    assert_eq!(text_of(&constant, "text"), "constant");
    let text = gzip_call(&client, "wire3.Wire3/Text", bomb.clone())
        .await
        .unwrap();
    let text = DynamicMessage::decode(out, text).unwrap();
    assert_eq!(text_of(&text, "text"), "|0|0||0||0");

    // A list well within the budget decodes.
    let r = gzip_call(&client, "wire3.Wire3/Count", packed_ones(100_000))
        .await
        .unwrap();
    assert!(r.is_empty(), "all fields default: {r:?}");
    // A large string decodes (3 MiB, copied into the reply).
    let big = client
        .unary(
            "wire3.Wire3/Count",
            json!({"s": "z".repeat(3 * 1024 * 1024), "i32": 2}),
        )
        .await
        .unwrap();
    assert_eq!(big["text"].as_str().unwrap().len(), 3 * 1024 * 1024);
    assert_eq!(big["count"], "2");
}

/// The budget follows `--max-message-size`: with a larger limit, the same list decodes.
#[tokio::test]
async fn decode_budget_follows_max_message_size() {
    let n = 300_000;
    let server = wire_server(&["--max-message-size", "16777216"]);
    let client = connect(&server).await;
    gzip_call(&client, "wire3.Wire3/Decoded", packed_ones(n))
        .await
        .expect("within 8 x 16 MiB");
    let server = wire_server(&["--max-message-size", "2097152"]);
    let client = connect(&server).await;
    let err = gzip_call(&client, "wire3.Wire3/Decoded", packed_ones(n))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
}
