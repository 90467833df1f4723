//! A `.proto` nested deeper than protoserve accepts is a located error, not a crash.
//!
//! An option's aggregate value nested a few hundred levels deep (`option (agg) = {a: {a: …}}`,
//! in a file, field, enum value, method or extension range option, with braces, angle brackets
//! or lists of messages) overflowed the stack while the option was interpreted: `check` and
//! startup aborted, and a running server that reloaded such a file aborted with it. Now a file
//! that nests `{`, `[` and `<` more than 64 deep is refused with `file:line:col` and the limit,
//! a reload of one keeps the running generation, and a file at the limit is served. A
//! descriptor set carrying such a value as an uninterpreted option's text is refused too.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::project::Project;
use common::{Client, Server};
use prost_reflect::Value;
use serde_json::json;

/// How deep braces, brackets and angle brackets may nest (README, "Protos").
const LIMIT: usize = 64;

/// Declares an option message that nests, as an extension of each kind of options.
const HEADER: &str = r#"syntax = "proto2";
package deep;
import "google/protobuf/descriptor.proto";
message Agg { optional Agg a = 1; optional int32 v = 2; repeated Agg r = 3; }
extend google.protobuf.FileOptions { optional Agg agg = 50000; }
extend google.protobuf.FieldOptions { optional Agg fagg = 50001; }
extend google.protobuf.ExtensionRangeOptions { optional Agg eagg = 50002; }
extend google.protobuf.EnumValueOptions { optional Agg vagg = 50003; }
extend google.protobuf.MethodOptions { optional Agg magg = 50004; }
"#;

/// The line of [`HEADER`]'s file that each case's nested value is on.
const CASE_LINE: usize = 10;

/// An `Agg` value `depth` braces deep.
fn value(depth: usize) -> String {
    format!(
        "{}{{v: 1}}{}",
        "{a: ".repeat(depth - 1),
        "}".repeat(depth - 1)
    )
}

/// Every construct that nests an option value: (name, file) with the value nested so that
/// the file's deepest point is `total` levels (braces of the enclosing declaration included).
fn cases(total: usize) -> Vec<(&'static str, String)> {
    let list_levels = (total - 1) / 2;
    [
        ("file option", format!("option (agg) = {};", value(total))),
        (
            "field option",
            format!(
                "message M {{ optional int32 x = 1 [(fagg) = {}]; }}",
                value(total - 2)
            ),
        ),
        (
            "angle brackets",
            format!(
                "option (agg) = {{{}v: 1{}}};",
                "a < ".repeat(total - 1),
                " >".repeat(total - 1)
            ),
        ),
        (
            "list of messages",
            format!(
                "option (agg) = {}{{v: 1}}{};",
                "{r: [".repeat(list_levels),
                "]}".repeat(list_levels)
            ),
        ),
        (
            "extension range option",
            format!(
                "message M {{ extensions 100 to 200 [(eagg) = {}]; }}",
                value(total - 2)
            ),
        ),
        (
            "enum value option",
            format!("enum E {{ Z = 0 [(vagg) = {}]; }}", value(total - 2)),
        ),
        (
            "method option",
            format!(
                "service S {{ rpc Call (Agg) returns (Agg) {{ option (magg) = {}; }} }}",
                value(total - 2)
            ),
        ),
    ]
    .into_iter()
    .map(|(name, line)| (name, format!("{HEADER}{line}\n")))
    .collect()
}

/// The column of the first bracket past the limit, as `file:line:col` gives it, is a bracket.
fn assert_points_at_a_bracket(stderr: &str, file: &Path, text: &str) {
    let prefix = format!("{}:{CASE_LINE}:", file.display());
    let at = stderr
        .find(&prefix)
        .unwrap_or_else(|| panic!("no {prefix} in {stderr}"));
    let col: usize = stderr[at + prefix.len()..]
        .split(':')
        .next()
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no column after {prefix} in {stderr}"));
    let line = text.lines().nth(CASE_LINE - 1).unwrap();
    let c = line.chars().nth(col - 1);
    assert!(
        matches!(c, Some('{' | '<' | '[')),
        "column {col} of line {CASE_LINE} is {c:?}, not a bracket: {stderr}"
    );
}

#[test]
fn check_refuses_a_file_nested_1000_deep_with_its_place_and_the_limit() {
    for (name, text) in cases(1000) {
        let project = Project::shipped();
        project.write("protos/deep.proto", &text);
        let args = project.args();
        let mut argv = vec!["check"];
        argv.extend(args.iter().map(String::as_str));
        let (code, _, stderr) = common::run(&argv);
        assert_eq!(
            code, 2,
            "{name}: check must report a startup problem, not crash: {stderr}"
        );
        let file = project.path("protos/deep.proto");
        assert_points_at_a_bracket(&stderr, &file, &text);
        assert!(
            stderr.contains(&format!("at most {LIMIT} levels deep")),
            "{name}: the limit is named: {stderr}"
        );
        assert!(
            !stderr.contains("overflow"),
            "{name}: no stack overflow: {stderr}"
        );
    }
}

/// A descriptor set of one file whose file option is left uninterpreted, its aggregate text
/// nested `depth` braces deep (the outer braces of a value are not written in that text).
fn set_with_uninterpreted_option(depth: usize) -> Vec<u8> {
    use prost::Message as _;
    use prost_types::field_descriptor_proto::{Label, Type};
    use prost_types::uninterpreted_option::NamePart;
    use prost_types::{
        DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet, FileOptions,
        UninterpretedOption,
    };
    let field = |name: &str, number: i32, kind: Type| FieldDescriptorProto {
        name: Some(name.into()),
        number: Some(number),
        label: Some(Label::Optional as i32),
        r#type: Some(kind as i32),
        type_name: (kind == Type::Message).then(|| ".dset.Agg".into()),
        ..Default::default()
    };
    let file = FileDescriptorProto {
        name: Some("dset.proto".into()),
        package: Some("dset".into()),
        syntax: Some("proto2".into()),
        dependency: vec!["google/protobuf/descriptor.proto".into()],
        message_type: vec![DescriptorProto {
            name: Some("Agg".into()),
            field: vec![field("a", 1, Type::Message), field("v", 2, Type::Int32)],
            ..Default::default()
        }],
        extension: vec![FieldDescriptorProto {
            extendee: Some(".google.protobuf.FileOptions".into()),
            ..field("agg", 50000, Type::Message)
        }],
        options: Some(FileOptions {
            uninterpreted_option: vec![UninterpretedOption {
                name: vec![NamePart {
                    name_part: "dset.agg".into(),
                    is_extension: true,
                }],
                aggregate_value: Some(format!("{}v: 1{}", "a: {".repeat(depth), "}".repeat(depth))),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    FileDescriptorSet { file: vec![file] }.encode_to_vec()
}

#[test]
fn check_refuses_a_descriptor_set_option_nested_1000_deep() {
    let project = Project::shipped();
    for (depth, refused) in [(1000, true), (LIMIT, false)] {
        let set = project.path("deep.binpb");
        std::fs::write(&set, set_with_uninterpreted_option(depth)).unwrap();
        let args = project.args();
        let mut argv = vec!["check", "--descriptor-set", set.to_str().unwrap()];
        argv.extend(args.iter().map(String::as_str));
        let (code, _, stderr) = common::run(&argv);
        if refused {
            assert_eq!(code, 2, "a startup problem, not a crash: {stderr}");
            assert!(
                stderr.contains(&format!("--descriptor-set {}: dset.proto:", set.display())),
                "names the set and the file: {stderr}"
            );
            assert!(
                stderr.contains("(dset.agg)")
                    && stderr.contains(&format!("at most {LIMIT} levels deep")),
                "names the option and the limit: {stderr}"
            );
        } else {
            assert_eq!(code, 0, "a value at the limit is valid: {stderr}");
        }
    }
}

/// Waits (bounded) until the server logs a line with `needle`; fails at once if it exits.
fn wait_for_log_alive(server: &mut Server, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(line) = server.log().into_iter().find(|l| l.contains(needle)) {
            return line;
        }
        if let Some(status) = server.wait_exit(Duration::ZERO) {
            panic!(
                "the server exited ({status}) instead of logging {needle:?}: {:#?}",
                server.log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {needle:?}: {:#?}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn say_hello(client: &Client) -> serde_json::Value {
    client
        .unary("helloworld.Greeter/SayHello", json!({"name": "deep"}))
        .await
        .expect("SayHello answers")
}

#[tokio::test]
async fn a_reload_of_a_file_nested_1000_deep_keeps_serving() {
    let project = Project::shipped();
    let mut server = project.start(&[]);
    let client = project.client(&server).await;
    assert_eq!(say_hello(&client).await, json!({"message": "Hello, deep!"}));
    let file = project.path("protos/deep.proto");
    for (round, (name, text)) in cases(1000).into_iter().take(3).enumerate() {
        project.write("protos/deep.proto", &text);
        // Each failed reload logs the problem and that generation 1 still serves.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let failures = server
                .log()
                .iter()
                .filter(|l| l.contains("still serving generation 1"))
                .count();
            if failures > round {
                break;
            }
            if let Some(status) = server.wait_exit(Duration::ZERO) {
                panic!("{name}: the server exited ({status}) on reload");
            }
            assert!(
                Instant::now() < deadline,
                "{name}: the reload did not fail: {:#?}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let problem = wait_for_log_alive(&mut server, &format!("{}:{CASE_LINE}:", file.display()));
        assert!(
            problem.contains(&format!("at most {LIMIT} levels deep")),
            "{name}: {problem}"
        );
        assert!(server.is_running(), "{name}: the server exited");
        assert_eq!(
            say_hello(&client).await,
            json!({"message": "Hello, deep!"}),
            "{name}"
        );
    }
}

/// The `Agg` nesting of `value` through field `a`, `r` (first element) or the end.
fn agg_depth(value: &Value) -> usize {
    let Value::Message(m) = value else {
        return 0;
    };
    let inner = m
        .get_field_by_name("a")
        .filter(|_| m.has_field_by_name("a"));
    let listed = match m.get_field_by_name("r").as_deref() {
        Some(Value::List(items)) => items.first().cloned(),
        _ => None,
    };
    match (inner, listed) {
        (Some(a), _) => 1 + agg_depth(&a),
        (None, Some(r)) => 1 + agg_depth(&r),
        (None, None) => 1,
    }
}

#[tokio::test]
async fn a_file_nested_to_the_limit_compiles_and_serves() {
    let mut at_limit = cases(LIMIT);
    // Message declarations nest 31 deep at most (protoc's limit); an option value inside the
    // deepest one fills the rest.
    let messages = 31;
    at_limit.push((
        "nested messages and a field option",
        format!(
            "{HEADER}\n{}optional int32 x = 1 [(fagg) = {}];{}\n",
            "message N { ".repeat(messages),
            value(LIMIT - messages - 1),
            " }".repeat(messages)
        ),
    ));
    for (name, text) in at_limit {
        let project = Project::shipped();
        project.write("protos/deep.proto", &text);
        let args = project.args();
        let mut argv = vec!["check"];
        argv.extend(args.iter().map(String::as_str));
        let (code, _, stderr) = common::run(&argv);
        assert_eq!(code, 0, "{name}: a file at the limit is valid: {stderr}");

        let server = project.start(&[]);
        let schema = protoserve::schema::compile(&protoserve::schema::SchemaInputs::protos(&[
            project.path("protos"),
        ]))
        .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        if name == "file option" {
            let file = schema.pool.get_file_by_name("deep.proto").unwrap();
            let ext = schema.pool.get_extension_by_name("deep.agg").unwrap();
            let options = file.options();
            assert_eq!(agg_depth(&options.get_extension(&ext)), LIMIT, "{name}");
        }
        let client = Client::connect(server.addr, schema.pool).await;
        assert_eq!(
            say_hello(&client).await,
            json!({"message": "Hello, deep!"}),
            "{name}"
        );
    }
}
