//! The largest public tree, googleapis, from the npm package `google-proto-files` (pinned in
//! tests/stock/package.json): a representative part of it is compiled, served and reflected
//! (the whole tree is timed in bench/run), the linker's output is checked against protox's, and
//! the bundled Google API files are checked against the published ones.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use prost::Message;
use prost_reflect::{DescriptorPool, ReflectMessage};
use protoserve::schema::{self, raw, SchemaInputs};
use serde_json::json;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

use common::{googleapis, Client, Server};

/// googleapis without the two giants (ads, cloud: 6 300 of its 7 200 files) and without the
/// protobuf sources, which are bundled: about 900 files of every other API family, whose imports
/// (some into google/cloud) resolve through `-I` on the whole package.
fn subset() -> (tempfile::TempDir, PathBuf) {
    let root = googleapis();
    let tree = tempfile::tempdir().unwrap();
    std::fs::create_dir(tree.path().join("google")).unwrap();
    for entry in std::fs::read_dir(root.join("google")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if ["ads", "cloud", "protobuf"].contains(&name.to_str().unwrap()) {
            continue;
        }
        std::os::unix::fs::symlink(entry.path(), tree.path().join("google").join(&name)).unwrap();
    }
    std::os::unix::fs::symlink(root.join("grafeas"), tree.path().join("grafeas")).unwrap();
    (tree, root)
}

fn handlers(dir: &Path) {
    std::fs::write(
        dir.join("pubsub.json"),
        r#"{ "service": "google.pubsub.v1.Publisher",
             "methods": { "GetTopic": { "reply": {
               "name": "{{topic}}", "labels": { "team": "fake" }, "kms_key_name": "k",
               "message_retention_duration": "600s" } } } }"#,
    )
    .unwrap();
}

/// One v1 reflection request, answered.
async fn reflect(
    client: &mut ServerReflectionClient<tonic::transport::Channel>,
    request: MessageRequest,
) -> MessageResponse {
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .expect("reflection call")
        .into_inner();
    answers
        .message()
        .await
        .expect("reflection answer")
        .expect("one answer")
        .message_response
        .expect("a response")
}

/// Everything a reflection client needs to describe `symbol`: its file and, by name, every file
/// that one imports, fetched the way grpcurl does, in a pool.
async fn describe(addr: std::net::SocketAddr, symbol: &str) -> DescriptorPool {
    let channel = common::channel(addr).await;
    let mut client = ServerReflectionClient::new(channel);
    let mut files: Vec<raw::File> = Vec::new();
    let mut wanted = vec![MessageRequest::FileContainingSymbol(symbol.into())];
    let mut seen = std::collections::HashSet::new();
    while let Some(request) = wanted.pop() {
        let MessageResponse::FileDescriptorResponse(found) = reflect(&mut client, request).await
        else {
            panic!("reflection found nothing for a file of {symbol}");
        };
        for bytes in found.file_descriptor_proto {
            let file = raw::File::decode(bytes.as_slice()).unwrap();
            for dep in &file.dependency {
                if seen.insert(dep.clone()) {
                    wanted.push(MessageRequest::FileByFilename(dep.clone()));
                }
            }
            files.push(file);
        }
    }
    files.reverse();
    let mut pool = DescriptorPool::new();
    // Dependencies were fetched after the files that import them.
    let set = raw::FileSet { file: files };
    pool.decode_file_descriptor_set(set.encode_to_vec().as_slice())
        .expect("the reflected files make a valid pool");
    pool
}

#[tokio::test(flavor = "multi_thread")]
async fn googleapis_subset_is_served_listed_and_reflected() {
    let (tree, root) = subset();
    let handler_dir = tempfile::tempdir().unwrap();
    handlers(handler_dir.path());
    let server = Server::start(&[
        "--protos",
        tree.path().to_str().unwrap(),
        "-I",
        root.to_str().unwrap(),
        "--handlers",
        handler_dir.path().to_str().unwrap(),
        "--no-cache",
    ]);

    // A `reply` handler on a googleapis method, called with a client compiled from the tree.
    let client_schema = schema::compile(&SchemaInputs {
        protos: vec![tree.path().to_path_buf()],
        import_paths: vec![root.clone()],
        services: vec![
            "google.pubsub.v1.Publisher".into(),
            "google.pubsub.v1.Subscriber".into(),
            "google.spanner.v1.Spanner".into(),
        ],
        ..SchemaInputs::default()
    })
    .expect("the subset compiles");
    assert!(
        client_schema.files.len() > 800 && client_schema.service_count() > 150,
        "{} files, {} services",
        client_schema.files.len(),
        client_schema.service_count()
    );
    assert!(
        !client_schema.whole,
        "big enough that only the handlers' services are decoded"
    );
    assert!(client_schema
        .pool
        .get_service_by_name("google.bigtable.v2.Bigtable")
        .is_none());
    let client = Client::connect(server.addr, client_schema.pool.clone()).await;
    let reply = client
        .unary(
            "google.pubsub.v1.Publisher/GetTopic",
            json!({"topic": "projects/p/topics/t"}),
        )
        .await
        .expect("GetTopic is answered by its handler");
    assert_eq!(reply["name"], "projects/p/topics/t");
    assert_eq!(reply["labels"]["team"], "fake");
    assert_eq!(reply["messageRetentionDuration"], "600s");

    // A method no handler names: UNIMPLEMENTED, saying so.
    for path in [
        "/google.pubsub.v1.Subscriber/Pull",
        "/google.spanner.v1.Spanner/ExecuteSql",
        "/grafeas.v1.Grafeas/GetNote",
    ] {
        let err = client
            .raw_unary(path, bytes::Bytes::new())
            .await
            .expect_err(path);
        assert_eq!(err.code(), tonic::Code::Unimplemented, "{path}: {err:?}");
        assert!(err.message().contains("has no handler"), "{path}: {err:?}");
    }
    let err = client
        .raw_unary(
            "/google.pubsub.v1.Subscriber/NoSuchMethod",
            bytes::Bytes::new(),
        )
        .await
        .expect_err("unknown method");
    assert!(err.message().contains("unknown method"), "{err:?}");

    // Those calls are journaled (refused before their request was read), and a verify of such
    // a method, or of one never called, counts them like any other though no handler names it.
    for (method, when, count) in [
        (
            "google.spanner.v1.Spanner/ExecuteSql",
            json!({"metadata": {"user-agent": {"present": true}}}),
            1,
        ),
        ("grafeas.v1.Grafeas/GetNote", json!({}), 1),
        ("google.bigtable.v2.Bigtable/ReadRows", json!({}), 0),
    ] {
        let (status, answer) = server
            .admin_post(
                "/v1/verify",
                &json!({"method": method, "when": when, "exactly": count}),
            )
            .await;
        assert_eq!(status, 200, "{method}: {answer:#}");
        assert_eq!(answer["ok"], true, "{method}: {answer:#}");
    }

    // A runtime handler on a service no handler file names: its descriptors are decoded then.
    let (status, body) = server
        .admin_call(
            "PUT",
            "/v1/handlers/google.spanner.v1.Spanner/GetSession",
            None,
            Some(r#"{"reply": {"name": "{{name}}", "creator_role": "fake"}}"#),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let session = client
        .unary(
            "google.spanner.v1.Spanner/GetSession",
            json!({"name": "projects/p/instances/i/databases/d/sessions/s"}),
        )
        .await
        .expect("the runtime handler answers");
    assert_eq!(session["creatorRole"], "fake");
    let services = server.admin_get("/v1/services").await;
    let listed = services["services"].as_array().unwrap();
    assert!(
        listed.len() > 150,
        "every declared service: {}",
        listed.len()
    );

    // Reflection: a deep type with its imports, custom options included.
    let pool = describe(server.addr, "google.spanner.v1.Mutation.Write").await;
    let write = pool
        .get_message_by_name("google.spanner.v1.Mutation.Write")
        .expect("the deep type is described");
    let values = write.get_field_by_name("values").expect("Write.values");
    assert_eq!(
        values.kind().as_message().map(|m| m.full_name().to_owned()),
        Some("google.protobuf.ListValue".to_owned())
    );
    let pool = describe(server.addr, "google.pubsub.v1.Publisher").await;
    let get_topic = pool
        .get_service_by_name("google.pubsub.v1.Publisher")
        .unwrap()
        .methods()
        .find(|m| m.name() == "GetTopic")
        .unwrap();
    let http = pool
        .get_extension_by_name("google.api.http")
        .expect("annotations.proto is reflected too");
    let options = get_topic.options();
    let rule = options.get_extension(&http);
    let rule = rule.as_message().expect("HttpRule");
    assert_eq!(
        rule.get_field_by_name("get")
            .and_then(|v| v.as_str().map(str::to_owned)),
        Some("/v1/{topic=projects/*/topics/*}".to_owned()),
        "the (google.api.http) option survives reflection: {rule:?}"
    );
    let _ = options.descriptor();

    // buf curl lists and calls through reflection alone.
    let url = format!("http://{}", server.addr);
    let out = Command::new(common::buf())
        .args([
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            "--list-services",
            &url,
        ])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for s in [
        "google.pubsub.v1.Publisher",
        "grafeas.v1.Grafeas",
        "google.longrunning.Operations",
    ] {
        assert!(listed.lines().any(|l| l == s), "{s} not listed:\n{listed}");
    }
    assert!(listed.lines().count() > 150, "{listed}");
    let out = Command::new(common::buf())
        .args([
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            "-d",
            r#"{"topic":"projects/x/topics/y"}"#,
            &format!("{url}/google.pubsub.v1.Publisher/GetTopic"),
        ])
        .output()
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(body["name"], "projects/x/topics/y");

    // `list` filters by package or service prefix.
    let tree_arg = tree.path().to_str().unwrap();
    let root_arg = root.to_str().unwrap();
    let handlers_arg = handler_dir.path().to_str().unwrap();
    let (code, out, _) = common::run(&[
        "list",
        "--protos",
        tree_arg,
        "-I",
        root_arg,
        "--handlers",
        handlers_arg,
        "--no-cache",
        "google.pubsub.v1.Pub",
        "grafeas.v1.",
    ]);
    assert_eq!(code, 0);
    let services: Vec<&str> = out.lines().filter(|l| !l.starts_with(' ')).collect();
    assert_eq!(
        services,
        ["google.pubsub.v1.Publisher", "grafeas.v1.Grafeas"],
        "{out}"
    );
    assert!(
        out.contains("  GetTopic                 unary             reply"),
        "{out}"
    );
    assert!(
        out.contains("  Publish                  unary             no handler"),
        "{out}"
    );
    let (code, _, err) = common::run(&[
        "list",
        "--protos",
        tree_arg,
        "-I",
        root_arg,
        "--handlers",
        handlers_arg,
        "--no-cache",
        "no.such.package",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no service starts with no.such.package"),
        "{err}"
    );
}

/// protox's output for `names` (with what they import), each file re-encoded the same way. The
/// well-known types come from protox (the package's own copies are newer than protox parses).
fn protox_files(roots: &[PathBuf], names: &[String]) -> Vec<raw::File> {
    use protox::file::{ChainFileResolver, GoogleFileResolver, IncludeFileResolver};
    let mut resolver = ChainFileResolver::new();
    resolver.add(GoogleFileResolver::new());
    for root in roots {
        resolver.add(IncludeFileResolver::new(root.clone()));
    }
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(true).include_source_info(false);
    compiler.open_files(names).unwrap();
    raw::FileSet::decode(compiler.encode_file_descriptor_set().as_slice())
        .unwrap()
        .file
}

fn same(ours: &schema::Files, theirs: &[raw::File]) -> Vec<String> {
    let mut differ = Vec::new();
    for file in theirs {
        let name = raw::name(&file.name);
        let ours = ours
            .by_name(name)
            .map(|f| raw::File::decode(f.bytes.as_ref()).unwrap());
        if ours.as_ref().map(Message::encode_to_vec) != Some(file.encode_to_vec()) {
            differ.push(name.to_owned());
        }
    }
    differ
}

#[test]
fn linker_agrees_with_protox_on_googleapis_files() {
    let (tree, root) = subset();
    let ours = schema::compile(&SchemaInputs {
        protos: vec![tree.path().to_path_buf()],
        import_paths: vec![root.clone()],
        ..SchemaInputs::default()
    })
    .unwrap();
    // Every family once; protox in debug is slow, so a sample of files with services.
    let mut names: Vec<String> = ours
        .files
        .services()
        .iter()
        .map(|s| {
            ours.files
                .iter()
                .nth(s.file as usize)
                .unwrap()
                .name
                .to_string()
        })
        .collect();
    names.sort();
    names.dedup();
    let names: Vec<String> = names.into_iter().step_by(4).collect();
    let theirs = protox_files(&[tree.path().to_path_buf(), root], &names);
    assert!(theirs.len() > 100, "{}", theirs.len());
    let differ = same(&ours.files, &theirs);
    assert!(
        differ.is_empty(),
        "linked differently from protox: {differ:?}"
    );
}

#[test]
fn bundled_google_files_are_wire_identical_to_the_published_ones() {
    let root = googleapis();
    // One file that imports every bundled one, compiled with nothing on the import path.
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = schema::bundled::SOURCES
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    let imports: String = names.iter().map(|n| format!("import \"{n}\";\n")).collect();
    std::fs::write(
        dir.path().join("all.proto"),
        format!("syntax = \"proto3\";\npackage all;\n{imports}"),
    )
    .unwrap();
    let ours = schema::compile(&SchemaInputs::protos(&[dir.path().to_path_buf()])).unwrap();
    let theirs = protox_files(&[root], &names);
    let theirs: Vec<raw::File> = theirs
        .into_iter()
        .filter(|f| names.contains(&raw::name(&f.name).to_owned()))
        .collect();
    assert_eq!(theirs.len(), names.len());
    let differ = same(&ours.files, &theirs);
    assert!(
        differ.is_empty(),
        "bundled files differ from the published: {differ:?}"
    );
}
