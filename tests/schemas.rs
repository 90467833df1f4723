//! Inputs beyond a folder of proto3 files: descriptor sets made by `buf build`, editions,
//! vendored copies of bundled files, the descriptor cache, and a tree of thousands of files.

mod common;

use std::path::Path;
use std::process::Command;

use serde_json::json;

use common::{Client, Server};

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn buf_build(module: &Path, out: &Path, extra: &[&str]) {
    let result = Command::new(common::buf())
        .arg("build")
        .arg(module)
        .arg("-o")
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        result.status.success(),
        "buf build: {}",
        String::from_utf8_lossy(&result.stderr)
    );
}

const SHOP: &str = r#"syntax = "proto3";
package shop.v1;
import "google/protobuf/timestamp.proto";
import "shop/v1/money.proto";
service Shop { rpc Price(PriceRequest) returns (PriceReply); }
message PriceRequest { string sku = 1; }
message PriceReply { string sku = 1; Cents price = 2; google.protobuf.Timestamp at = 3; }
"#;

const MONEY: &str = r#"syntax = "proto3";
package shop.v1;
message Cents { int64 cents = 1; }
"#;

#[tokio::test(flavor = "multi_thread")]
async fn descriptor_sets_from_buf_build_are_served_with_protos() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("module");
    write(&module.join("shop/v1/shop.proto"), SHOP);
    write(&module.join("shop/v1/money.proto"), MONEY);
    let set = dir.path().join("shop.binpb");
    buf_build(&module, &set, &[]);
    // A --protos folder next to the set, importing one of the set's files.
    let protos = dir.path().join("protos");
    write(
        &protos.join("audit.proto"),
        r#"syntax = "proto3";
package audit;
import "shop/v1/money.proto";
service Audit { rpc Check(shop.v1.Cents) returns (shop.v1.Cents); }
"#,
    );
    let handlers = dir.path().join("handlers");
    write(
        &handlers.join("shop.json"),
        r#"{"service": "shop.v1.Shop", "methods": {"Price": {"reply": {"sku": "{{sku}}", "price": {"cents": 250}}}}}"#,
    );
    write(
        &handlers.join("audit.json"),
        r#"{"service": "audit.Audit", "methods": {"Check": {"echo": {}}}}"#,
    );
    let args = [
        "--descriptor-set",
        set.to_str().unwrap(),
        "--protos",
        protos.to_str().unwrap(),
        "--handlers",
        handlers.to_str().unwrap(),
        "--no-cache",
    ];
    let server = Server::start(&args);
    let schema = protoserve::schema::compile(&protoserve::schema::SchemaInputs {
        protos: vec![protos.clone()],
        descriptor_sets: vec![set.clone()],
        ..Default::default()
    })
    .unwrap();
    let client = Client::connect(server.addr, schema.pool).await;
    let reply = client
        .unary("shop.v1.Shop/Price", json!({"sku": "A-1"}))
        .await
        .unwrap();
    assert_eq!(reply, json!({"sku": "A-1", "price": {"cents": "250"}}));
    let reply = client
        .unary("audit.Audit/Check", json!({"cents": "7"}))
        .await
        .unwrap();
    assert_eq!(reply, json!({"cents": "7"}));

    // Reflection and health see the set's services like any other.
    let out = Command::new(common::buf())
        .args(["curl", "--protocol", "grpc", "--http2-prior-knowledge"])
        .args(["-d", r#"{"sku":"B"}"#])
        .arg(format!("http://{}/shop.v1.Shop/Price", server.addr))
        .output()
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(body["price"]["cents"], "250");
    let out = Command::new(common::buf())
        .args(["curl", "--protocol", "grpc", "--http2-prior-knowledge"])
        .args(["-d", r#"{"service":"shop.v1.Shop"}"#])
        .arg(format!(
            "http://{}/grpc.health.v1.Health/Check",
            server.addr
        ))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("SERVING"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Only a set: no protos/ folder is read.
    std::fs::remove_file(handlers.join("audit.json")).unwrap();
    let (code, out, err) = common::run(&[
        "list",
        "--descriptor-set",
        set.to_str().unwrap(),
        "--handlers",
        handlers.to_str().unwrap(),
        "--no-cache",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("shop.v1.Shop\n  Price"), "{out}");
}

#[test]
fn a_set_missing_a_dependency_names_the_file_and_the_import() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("module");
    write(&module.join("shop/v1/shop.proto"), SHOP);
    write(&module.join("shop/v1/money.proto"), MONEY);
    let set = dir.path().join("shop.binpb");
    buf_build(
        &module,
        &set,
        &[
            "--path",
            module.join("shop/v1/shop.proto").to_str().unwrap(),
            "--exclude-imports",
        ],
    );
    let (code, err) = check_set_alone(dir.path(), &set);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("shop.binpb"), "{err}");
    assert!(
        err.contains("shop/v1/shop.proto imports \"shop/v1/money.proto\""),
        "{err}"
    );
    // The well-known import it also lacks is bundled, so it is not reported.
    assert!(!err.contains("timestamp"), "{err}");
}

/// A descriptor set whose messages nest 120 deep (only a tool, not a .proto, can write one)
/// was refused with a line of 2 300 bytes naming `Message.nested_type` a hundred times and
/// telling to rebuild the set with buf or protoc, which would not help. It says how deep is
/// too deep and what to change, and names the file and the chain of messages that goes so
/// deep.
#[test]
fn a_set_nested_too_deep_says_so_in_one_short_line() {
    // DescriptorProto: name = 1, nested_type = 3; FileDescriptorProto: name = 1,
    // message_type = 4; FileDescriptorSet: file = 1.
    let mut message = common::len_field(1, b"M120");
    for depth in (0..120).rev() {
        let mut outer = common::len_field(1, format!("M{depth}").as_bytes());
        outer.extend(common::len_field(3, &message));
        message = outer;
    }
    let mut file = common::len_field(1, b"deep.proto");
    file.extend(common::len_field(4, &message));
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("deep.binpb");
    std::fs::write(&set, common::len_field(1, &file)).unwrap();
    let (code, err) = check_set_alone(dir.path(), &set);
    assert_eq!(code, 2, "{err}");
    let line = err.lines().next().unwrap_or_default();
    assert!(
        line.contains(
            "deep.binpb: deep.proto: message M0 nests messages more than 98 levels deep (M0.M1.M2.….M96.M97.M98 is level 99), more than protobuf decoders accept (100 levels"
        ),
        "{err}"
    );
    assert!(line.contains("at the top level"), "{err}");
    assert!(line.len() < 400, "{} bytes: {line}", line.len());
}

/// A descriptor set whose map entries are not (`option map_entry` on a message without a
/// `value` field, without a `key` field, with a `double` or a message key) passed `check`, and
/// then the descriptor library panicked on the first message using it: every call carrying
/// the map was reset (CANCELLED), the journal could no longer be read, and an entry with no
/// key crashed `check` itself (exit 101). Such a set is refused, naming the entry.
#[test]
fn a_set_with_a_broken_map_entry_is_refused() {
    use prost::Message as _;
    use prost_types::field_descriptor_proto::{Label, Type};
    use prost_types::{
        DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet,
        MessageOptions,
    };
    let field = |name: &str, number: i32, kind: Type, type_name: Option<&str>, label: Label| {
        FieldDescriptorProto {
            name: Some(name.into()),
            number: Some(number),
            r#type: Some(kind as i32),
            type_name: type_name.map(Into::into),
            label: Some(label as i32),
            json_name: Some(name.into()),
            ..Default::default()
        }
    };
    let string = |name: &str, number: i32| field(name, number, Type::String, None, Label::Optional);
    let cases: Vec<(&str, Vec<FieldDescriptorProto>)> = vec![
        ("no value", vec![string("key", 1)]),
        ("no key", vec![string("value", 2)]),
        (
            "a double key",
            vec![
                field("key", 1, Type::Double, None, Label::Optional),
                string("value", 2),
            ],
        ),
        (
            "a message key",
            vec![
                field("key", 1, Type::Message, Some(".t.M"), Label::Optional),
                string("value", 2),
            ],
        ),
    ];
    for (what, entry_fields) in cases {
        let entry = DescriptorProto {
            name: Some("BEntry".into()),
            field: entry_fields,
            options: Some(MessageOptions {
                map_entry: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        let message = DescriptorProto {
            name: Some("M".into()),
            field: vec![
                string("a", 1),
                field("b", 2, Type::Message, Some(".t.M.BEntry"), Label::Repeated),
            ],
            nested_type: vec![entry],
            ..Default::default()
        };
        let file = FileDescriptorProto {
            name: Some("t.proto".into()),
            package: Some("t".into()),
            syntax: Some("proto3".into()),
            message_type: vec![message],
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let set = dir.path().join("t.binpb");
        let bytes = FileDescriptorSet { file: vec![file] }.encode_to_vec();
        std::fs::write(&set, bytes).unwrap();
        let (code, err) = check_set_alone(dir.path(), &set);
        assert_eq!(code, 2, "{what}: {err}");
        assert!(
            err.contains("t.proto: message t.M.BEntry is marked as a map entry"),
            "{what}: {err}"
        );
        assert!(!err.contains("panicked"), "{what}: {err}");
    }
}

/// Two broken sets that were reported badly: `syntax = "proto4"` printed a raw panic of the
/// descriptor library (its source location, and a backtrace under RUST_BACKTRACE=1) before a
/// vague error, and a field whose `oneof_index` points past the message's oneofs gave
/// "error: : : invalid oneof index", naming nothing.
#[test]
fn sets_with_an_unknown_syntax_or_a_bad_oneof_index_are_refused_clearly() {
    use prost::Message as _;
    use prost_types::field_descriptor_proto::{Label, Type};
    use prost_types::{
        DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet,
    };
    let file = |syntax: &str, oneof_index: Option<i32>| FileDescriptorProto {
        name: Some("t.proto".into()),
        package: Some("t".into()),
        syntax: Some(syntax.into()),
        message_type: vec![DescriptorProto {
            name: Some("M".into()),
            field: vec![FieldDescriptorProto {
                name: Some("a".into()),
                number: Some(1),
                r#type: Some(Type::String as i32),
                label: Some(Label::Optional as i32),
                json_name: Some("a".into()),
                oneof_index,
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    for (what, f, said) in [
        (
            "proto4",
            file("proto4", None),
            "proto4.binpb: t.proto: syntax \"proto4\" is none protobuf has",
        ),
        (
            "oneof",
            file("proto3", Some(5)),
            "oneof.binpb: these descriptors are not valid: invalid oneof index",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let set = dir.path().join(format!("{what}.binpb"));
        std::fs::write(&set, FileDescriptorSet { file: vec![f] }.encode_to_vec()).unwrap();
        let (code, err) = check_set_alone(dir.path(), &set);
        assert_eq!(code, 2, "{what}: {err}");
        assert!(err.contains(said), "{what}: {err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
    }
}

const EDITION: &str = r#"// An editions file.
edition = "2023";
package ed;
option features.field_presence = IMPLICIT;
service Ed { rpc Get(Thing) returns (Thing); }
message Thing {
  string name = 1;
  int32 count = 2 [features.field_presence = EXPLICIT];
  repeated int32 list = 3 [features.repeated_field_encoding = EXPANDED];
}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn editions_sources_point_to_descriptor_sets_which_serve_them() {
    let dir = tempfile::tempdir().unwrap();
    let protos = dir.path().join("protos");
    write(&protos.join("ed/thing.proto"), EDITION);
    let handlers = dir.path().join("handlers");
    write(
        &handlers.join("ed.json"),
        r#"{"service": "ed.Ed", "methods": {"Get": {"reply": {"name": "got {{name}}", "count": 0, "list": [1, 2]}}}}"#,
    );
    let (code, _, err) = common::run(&[
        "check",
        "--protos",
        protos.to_str().unwrap(),
        "--handlers",
        handlers.to_str().unwrap(),
        "--no-cache",
    ]);
    assert_eq!(code, 2, "{err}");
    let thing = protos.join("ed/thing.proto");
    assert!(
        err.contains(&format!("{}:2:1", thing.display())),
        "names the file and the edition line: {err}"
    );
    assert!(
        err.contains("--descriptor-set") && err.contains("buf build"),
        "{err}"
    );

    // The module also declares a custom option, which a proto3 file next to the set uses.
    write(
        &protos.join("ed/opts.proto"),
        "edition = \"2023\";\npackage ed;\nimport \"google/protobuf/descriptor.proto\";\nextend google.protobuf.MethodOptions { string tag = 50001; }\n",
    );
    let set = dir.path().join("ed.binpb");
    buf_build(&protos, &set, &[]);
    let plain = dir.path().join("plain");
    write(
        &plain.join("uses.proto"),
        "syntax = \"proto3\";\npackage uses;\nimport \"ed/opts.proto\";\nimport \"ed/thing.proto\";\nservice U { rpc Get(ed.Thing) returns (ed.Thing) { option (ed.tag) = \"mine\"; } }\n",
    );
    let server = Server::start(&[
        "--descriptor-set",
        set.to_str().unwrap(),
        "--protos",
        plain.to_str().unwrap(),
        "--handlers",
        handlers.to_str().unwrap(),
        "--no-cache",
    ]);
    let schema = protoserve::schema::compile(&protoserve::schema::SchemaInputs {
        descriptor_sets: vec![set.clone()],
        protos: vec![plain.clone()],
        ..Default::default()
    })
    .unwrap();
    let tag = schema.pool.get_extension_by_name("ed.tag").unwrap();
    let get = schema
        .pool
        .get_service_by_name("uses.U")
        .unwrap()
        .methods()
        .next()
        .unwrap();
    assert_eq!(get.options().get_extension(&tag).as_str(), Some("mine"));
    let client = Client::connect(server.addr, schema.pool).await;
    let reply = client
        .unary("ed.Ed/Get", json!({"name": "it"}))
        .await
        .unwrap();
    assert_eq!(reply["name"], "got it");
    assert_eq!(reply["list"], json!([1, 2]));
    // Explicit presence (from the field's feature) keeps a zero that was set.
    assert_eq!(reply["count"], 0, "{reply}");
}

#[tokio::test(flavor = "multi_thread")]
async fn vendored_copies_of_bundled_files_lose_to_the_bundled_ones() {
    let root = common::googleapis();
    let dir = tempfile::tempdir().unwrap();
    let protos = dir.path().join("protos");
    // An up-to-date descriptor.proto (newer than protox can parse), an identical
    // annotations.proto and a changed field_behavior.proto, as real repos vendor them.
    for name in [
        "google/protobuf/descriptor.proto",
        "google/protobuf/timestamp.proto",
        "google/api/annotations.proto",
        "google/api/http.proto",
    ] {
        write(
            &protos.join(name),
            &std::fs::read_to_string(root.join(name)).unwrap(),
        );
    }
    let behavior = std::fs::read_to_string(root.join("google/api/field_behavior.proto")).unwrap();
    write(
        &protos.join("google/api/field_behavior.proto"),
        &behavior.replace("IDENTIFIER = 8;", "IDENTIFIER = 8;\n  VENDORED_EXTRA = 9;"),
    );
    write(
        &protos.join("notes/v1/notes.proto"),
        r#"syntax = "proto3";
package notes.v1;
import "google/api/annotations.proto";
import "google/api/field_behavior.proto";
import "google/protobuf/timestamp.proto";
service Notes {
  rpc GetNote(GetNoteRequest) returns (Note) { option (google.api.http) = { get: "/v1/{name=notes/*}" }; }
}
message GetNoteRequest { string name = 1 [(google.api.field_behavior) = REQUIRED]; }
message Note { string name = 1; google.protobuf.Timestamp created = 2; }
"#,
    );
    let handlers = dir.path().join("handlers");
    write(
        &handlers.join("notes.json"),
        r#"{"service": "notes.v1.Notes", "methods": {"GetNote": {"reply": {"name": "{{name}}", "created": "2024-01-02T03:04:05Z"}}}}"#,
    );
    let server = Server::start(&[
        "--protos",
        protos.to_str().unwrap(),
        "--handlers",
        handlers.to_str().unwrap(),
        "--no-cache",
    ]);
    let log = server.log().join("\n");
    let behavior_copy = protos.join("google/api/field_behavior.proto");
    assert!(
        log.contains(&format!(
            "{}: this copy of google/api/field_behavior.proto differs",
            behavior_copy.display()
        )),
        "{log}"
    );
    assert!(
        log.contains("google/protobuf/descriptor.proto differs"),
        "{log}"
    );
    assert!(
        !log.contains("google/api/annotations.proto differs"),
        "{log}"
    );
    assert!(
        !log.contains("google/protobuf/timestamp.proto differs"),
        "{log}"
    );
    let schema =
        protoserve::schema::compile(&protoserve::schema::SchemaInputs::protos(&[protos])).unwrap();
    // The bundled field_behavior.proto was used, not the copy.
    let behavior = schema
        .pool
        .get_enum_by_name("google.api.FieldBehavior")
        .unwrap();
    assert!(behavior.get_value_by_name("VENDORED_EXTRA").is_none());
    let client = Client::connect(server.addr, schema.pool.clone()).await;
    let reply = client
        .unary("notes.v1.Notes/GetNote", json!({"name": "notes/1"}))
        .await
        .unwrap();
    assert_eq!(
        reply,
        json!({"name": "notes/1", "created": "2024-01-02T03:04:05Z"})
    );
}

#[test]
fn the_cache_is_used_invalidated_and_survives_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let protos = dir.path().join("protos");
    let imports = dir.path().join("imports");
    write(
        &protos.join("a.proto"),
        "syntax = \"proto3\";\npackage a;\nimport \"lib/b.proto\";\nservice A { rpc One(b.B) returns (b.B); }\n",
    );
    write(
        &imports.join("lib/b.proto"),
        "syntax = \"proto3\";\npackage b;\nmessage B { string x = 1; }\n",
    );
    let handlers = dir.path().join("handlers");
    std::fs::create_dir(&handlers).unwrap();
    let cache = dir.path().join("cache");
    let list = || {
        let (code, out, err) = common::run(&[
            "list",
            "--protos",
            protos.to_str().unwrap(),
            "-I",
            imports.to_str().unwrap(),
            "--handlers",
            handlers.to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
            "--log-level",
            "protoserve=debug",
        ]);
        assert_eq!(code, 0, "{err}");
        (out, err)
    };
    let entries = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&cache)
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default()
    };
    let (out, err) = list();
    assert!(err.contains("files compiled"), "{err}");
    assert!(out.contains("  One "), "{out}");
    assert_eq!(entries().len(), 1, "one entry, no temporary file left");
    let (_, err) = list();
    assert!(
        err.contains("from the descriptor cache"),
        "warm start: {err}"
    );

    // A changed file is a different key: compiled again, and the change is seen.
    write(
        &protos.join("a.proto"),
        "syntax = \"proto3\";\npackage a;\nimport \"lib/b.proto\";\nservice A { rpc One(b.B) returns (b.B); rpc Two(b.B) returns (b.B); }\n",
    );
    let (out, err) = list();
    assert!(err.contains("files compiled"), "{err}");
    assert!(out.contains("  Two "), "{out}");
    let (_, err) = list();
    assert!(err.contains("from the descriptor cache"), "{err}");

    // A changed file from -I makes the entry stale.
    write(
        &imports.join("lib/b.proto"),
        "syntax = \"proto3\";\npackage b;\nmessage B { string x = 1; string y = 2; }\n",
    );
    let (_, err) = list();
    assert!(err.contains("b.proto changed"), "{err}");
    assert!(err.contains("files compiled"), "{err}");

    // A corrupt entry is ignored with a warning, and replaced.
    for entry in entries() {
        std::fs::write(&entry, b"not a cache entry").unwrap();
    }
    let (_, err) = list();
    assert!(err.contains("ignored (it is corrupt)"), "{err}");
    assert!(err.contains("files compiled"), "{err}");
    let (_, err) = list();
    assert!(err.contains("from the descriptor cache"), "{err}");

    // --no-cache reads and writes nothing.
    std::fs::remove_dir_all(&cache).unwrap();
    let (code, _, err) = common::run(&[
        "check",
        "--protos",
        protos.to_str().unwrap(),
        "-I",
        imports.to_str().unwrap(),
        "--handlers",
        handlers.to_str().unwrap(),
        "--no-cache",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(!cache.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn thousands_of_files_without_handlers_answer_unimplemented() {
    let dir = tempfile::tempdir().unwrap();
    let protos = dir.path().join("protos");
    // 3 000 files, every one importing two earlier ones; every 10th has a service.
    let mut text = String::new();
    std::fs::create_dir_all(&protos).unwrap();
    for i in 0usize..3000 {
        text.clear();
        text.push_str(&format!("syntax = \"proto3\";\npackage big.p{};\n", i % 50));
        let deps: Vec<usize> = [i.saturating_sub(1), i / 2]
            .into_iter()
            .filter(|&d| d < i)
            .collect();
        for d in &deps {
            text.push_str(&format!("import \"f{d}.proto\";\n"));
        }
        text.push_str(&format!(
            "message M{i} {{ string s = 1; int64 n = 2; repeated string r = 3;"
        ));
        for (k, d) in deps.iter().enumerate() {
            text.push_str(&format!(" big.p{}.M{d} m{k} = {};", d % 50, 10 + k));
        }
        text.push_str(" }\n");
        if i % 10 == 0 {
            text.push_str(&format!("service S{i} {{ rpc Get(M{i}) returns (M{i}); rpc Watch(M{i}) returns (stream M{i}); }}\n"));
        }
        std::fs::write(protos.join(format!("f{i}.proto")), &text).unwrap();
    }
    let handlers = dir.path().join("handlers");
    std::fs::create_dir(&handlers).unwrap();
    let server = Server::start(&[
        "--protos",
        protos.to_str().unwrap(),
        "--handlers",
        handlers.to_str().unwrap(),
        "--no-cache",
    ]);
    let logged = |s: &Server| {
        s.log()
            .iter()
            .any(|l| l.contains("300 services, 0 of 600 methods with handlers"))
    };
    for _ in 0..100 {
        if logged(&server) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(logged(&server), "{:?}", server.log());
    let client = Client::connect(server.addr, prost_reflect::DescriptorPool::new()).await;
    for path in [
        "/big.p0.S0/Get",
        "/big.p0.S2950/Watch",
        "/big.p10.S1010/Get",
    ] {
        let err = client
            .raw_unary(path, bytes::Bytes::new())
            .await
            .expect_err(path);
        assert_eq!(err.code(), tonic::Code::Unimplemented, "{path}: {err:?}");
        assert!(err.message().contains("has no handler"), "{path}: {err:?}");
    }
}

/// The descriptor cache keeps its 8 newest entries: ten different trees leave eight, and the
/// newest ones are still read from the cache while the oldest is compiled again.
#[test]
fn the_cache_keeps_its_8_newest_entries() {
    let dir = tempfile::tempdir().unwrap();
    let protos = dir.path().join("protos");
    let handlers = dir.path().join("handlers");
    std::fs::create_dir(&handlers).unwrap();
    let cache = dir.path().join("cache");
    let check = |version: usize| {
        write(
            &protos.join("c.proto"),
            &format!("syntax = \"proto3\";\npackage c;\nmessage M{version} {{ int32 a = 1; }}\n"),
        );
        let (code, _, err) = common::run(&[
            "check",
            "--protos",
            protos.to_str().unwrap(),
            "--handlers",
            handlers.to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
            "--log-level",
            "protoserve=debug",
        ]);
        assert_eq!(code, 0, "{err}");
        err
    };
    for version in 1..=10 {
        let err = check(version);
        assert!(err.contains("files compiled"), "version {version}: {err}");
        // Entries are ordered by modification time: keep the times distinct.
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let entries = std::fs::read_dir(&cache).unwrap().count();
    assert_eq!(entries, 8, "entries left in {}", cache.display());
    assert!(check(10).contains("from the descriptor cache"));
    assert!(check(3).contains("from the descriptor cache"));
    assert!(check(1).contains("files compiled"));
}

/// A descriptor set's editions file using a feature proto3 cannot express is refused naming the
/// set, the file and the field, once: the message had no file in front, so the whole message was
/// taken for the file's name and printed twice (`error: X uses …: X uses …`).
#[test]
fn editions_features_proto3_cannot_express_name_the_set_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let protos = dir.path().join("protos");
    write(
        &protos.join("ed/tree.proto"),
        "edition = \"2023\";\npackage ed;\nmessage Tree {\n  Tree left = 1 [features.message_encoding = DELIMITED];\n}\n",
    );
    let set = dir.path().join("tree.binpb");
    buf_build(&protos, &set, &[]);
    let (code, err) = check_set_alone(dir.path(), &set);
    assert_eq!(code, 2, "{err}");
    let line = err.lines().next().unwrap_or_default();
    let what = "ed.Tree.left uses features.message_encoding = DELIMITED";
    assert!(line.contains(what), "{err}");
    assert_eq!(line.matches(what).count(), 1, "said once: {line}");
    assert!(
        line.contains("tree.binpb") && line.contains("ed/tree.proto"),
        "{line}"
    );
}

/// `check` of the descriptor set `set` alone (an empty handler folder made in `dir`, no cache):
/// its exit status and standard error.
fn check_set_alone(dir: &std::path::Path, set: &std::path::Path) -> (i32, String) {
    let empty = dir.join("handlers");
    std::fs::create_dir(&empty).unwrap();
    let (code, _, err) = common::run(&[
        "check",
        "--descriptor-set",
        set.to_str().unwrap(),
        "--handlers",
        empty.to_str().unwrap(),
        "--no-cache",
    ]);
    (code, err)
}

/// An editions file's enum is closed by `features.enum_type = CLOSED` on itself or inherited
/// from its file or message. Such a file is served as proto3, whose enums are open, so a reply
/// or rule number the enum does not declare was taken (clients' parsers drop it) where a proto2
/// enum's was refused. `check` refuses it the same way, and an enum that is open stays open.
#[test]
fn editions_closed_enums_are_refused_numbers_they_do_not_declare() {
    let dir = tempfile::tempdir().unwrap();
    let protos = dir.path().join("protos");
    write(
        &protos.join("ed/levels.proto"),
        "edition = \"2023\";\npackage ed;\noption features.enum_type = CLOSED;\n\
         service Levels { rpc Get(Pick) returns (Pick); }\n\
         enum Level { LOW = 0; HIGH = 1; }\n\
         enum Mood { option features.enum_type = OPEN; CALM = 0; }\n\
         message Pick {\n  Level level = 1;\n  Mood mood = 2;\n  ed.Sign sign = 3;\n\
         \x20 enum Inner { IN = 0; }\n  Inner inner = 4;\n}\n",
    );
    write(
        &protos.join("ed/sign.proto"),
        "edition = \"2023\";\npackage ed;\nenum Sign { option features.enum_type = CLOSED; PLUS = 0; }\n",
    );
    let fixed = std::fs::read_to_string(protos.join("ed/levels.proto")).unwrap();
    write(
        &protos.join("ed/levels.proto"),
        &fixed.replacen(
            "package ed;\n",
            "package ed;\nimport \"ed/sign.proto\";\n",
            1,
        ),
    );
    let set = dir.path().join("levels.binpb");
    buf_build(&protos, &set, &[]);
    let handlers = dir.path().join("handlers");
    write(
        &handlers.join("levels.json"),
        "{\"service\": \"ed.Levels\", \"methods\": {\"Get\": {\"rules\": [\n\
         {\"when\": {\"request\": {\"level\": {\"in\": [\"HIGH\", 7]}}}, \"reply\": {\"mood\": 9}},\n\
         {\"reply\": {\"level\": 5, \"sign\": 3, \"inner\": 2}}\n]}}}\n",
    );
    let (code, _, err) = common::run(&[
        "check",
        "--descriptor-set",
        set.to_str().unwrap(),
        "--handlers",
        handlers.to_str().unwrap(),
        "--no-cache",
    ]);
    assert_eq!(code, 2, "{err}");
    for want in [
        "levels.json:2:48: ed.Levels/Get: rules[0].when.request.level.in[1]: 7 is not a value of ed.Level",
        "levels.json:3:12: ed.Levels/Get: rules[1].reply.level: 5 is not a value of ed.Level",
        "3 is not a value of ed.Sign",
        "2 is not a value of ed.Pick.Inner",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert!(!err.contains("ed.Mood"), "Mood is open: {err}");
    assert!(err.contains("4 problem(s) found"), "{err}");
}
