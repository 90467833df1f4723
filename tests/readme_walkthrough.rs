//! The README's walkthrough as a user follows it, against the real binary: "Quick start" on a
//! copy of the shipped project, then "Adding an RPC" step by step while the server runs, then
//! `protoserve list` on the edited tree. The calls, the edits, the answers and the listing are
//! read from README.md itself, so the README cannot promise what the server does not do.
//!
//! The client is one a user has without the `.proto`: it asks the server's reflection for the
//! descriptors, as grpcurl and `buf curl` do, and asks again after each reload.
//!
//! "Mistakes are caught at startup" is checked the same way: trees with the mistakes its
//! examples show, and `protoserve check` printing exactly the README's text.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use common::project::Project;
use common::reflection::v1::{ask, list_services, MessageRequest, MessageResponse};
use common::{binary, repo, Client, Server};
use prost::Message as _;
use prost_reflect::prost_types::FileDescriptorProto;
use prost_reflect::DescriptorPool;
use serde_json::{json, Value as Json};
use tonic::Code;

/// The text of the section headed `heading` (a whole `## ` line), up to the next `## ` heading.
fn section<'a>(readme: &'a str, heading: &str) -> &'a str {
    let start = readme
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("README.md has no section {heading:?}"))
        + 1;
    let body = start + heading.len();
    let end = readme[body..]
        .find("\n## ")
        .map_or(readme.len(), |i| body + i);
    &readme[start..end]
}

/// The fenced code blocks of language `lang` in `text`, without their fences and without the
/// fence's indentation (blocks inside list items are indented).
fn blocks(text: &str, lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut open: Option<(usize, Vec<&str>)> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match &mut open {
            None if trimmed == format!("```{lang}") => open = Some((indent, Vec::new())),
            None => {}
            Some((_, lines)) if trimmed == "```" => {
                out.push(lines.join("\n"));
                open = None;
            }
            Some((fence, lines)) => lines.push(line.get(*fence..).unwrap_or("")),
        }
    }
    out
}

/// One call a shell block makes with `buf curl` or `grpcurl`.
#[derive(Debug)]
struct ShellCall {
    /// `package.Service/Method`.
    method: String,
    request: Json,
    /// The answer the comment after the command shows (`# {"message": …}`), if any.
    reply: Option<Json>,
}

/// The calls of a shell block: commands joined across `\` line ends, each with a `-d` body and
/// a method, as a path at the end of a URL or as grpcurl's last argument.
fn shell_calls(block: &str) -> Vec<ShellCall> {
    let joined = block.replace("\\\n", " ");
    let mut calls = Vec::new();
    for line in joined.lines() {
        let line = line.trim();
        if !(line.starts_with("buf curl") || line.starts_with("grpcurl")) {
            continue;
        }
        let (command, comment) = match line.find(" # ") {
            Some(i) => (&line[..i], Some(line[i + 3..].trim())),
            None => (line, None),
        };
        let Some(body_at) = command.find("-d '") else {
            continue;
        };
        let body = &command[body_at + 4..];
        let body = &body[..body.find('\'').expect("a closing quote")];
        let method = command
            .split_whitespace()
            .filter_map(|token| {
                let path = match token.strip_prefix("http://") {
                    Some(url) => url.split_once('/')?.1,
                    None => token,
                };
                let (service, name) = path.split_once('/')?;
                (service.contains('.') && !name.is_empty() && !name.contains('/'))
                    .then(|| path.to_owned())
            })
            .next_back();
        let Some(method) = method else { continue };
        calls.push(ShellCall {
            method,
            request: serde_json::from_str(body).expect("the -d body is JSON"),
            reply: comment.map(|c| serde_json::from_str(c).expect("the comment is a reply")),
        });
    }
    calls
}

/// A client that knows only what the server's reflection describes, as grpcurl does.
async fn reflected_client(server: &Server, services: &[&str]) -> Client {
    let channel = common::channel(server.addr).await;
    let requests = services
        .iter()
        .map(|s| MessageRequest::FileContainingSymbol(s.to_string()))
        .collect();
    let mut pool = DescriptorPool::new();
    let mut names = HashSet::new();
    for answer in ask(channel.clone(), requests).await {
        let MessageResponse::FileDescriptorResponse(files) = answer else {
            panic!("reflection did not describe the service: {answer:?}");
        };
        let mut fresh = Vec::new();
        for bytes in files.file_descriptor_proto {
            let file = FileDescriptorProto::decode(bytes.as_slice()).unwrap();
            if names.insert(file.name().to_owned()) {
                fresh.push(file);
            }
        }
        pool.add_file_descriptor_protos(fresh)
            .expect("reflection's files link");
    }
    Client { pool, channel }
}

/// Makes `call` and checks its answer: the one the README shows, or else some answer.
async fn make(client: &Client, call: &ShellCall) {
    let method = client.method(&call.method);
    let answers = if method.is_server_streaming() {
        client
            .server_stream(&call.method, call.request.clone())
            .await
            .unwrap_or_else(|e| panic!("{call:?}: {e:?}"))
    } else {
        vec![client
            .unary(&call.method, call.request.clone())
            .await
            .unwrap_or_else(|e| panic!("{call:?}: {e:?}"))]
    };
    match &call.reply {
        Some(reply) => assert_eq!(answers, vec![reply.clone()], "{call:?}"),
        None => assert!(
            !answers.is_empty() && answers.iter().all(|a| a != &json!({})),
            "{call:?}: {answers:?}"
        ),
    }
}

/// `protoserve ARGS…` run in the folder `dir`, as the README's `$ protoserve …` lines are:
/// (exit code, stdout, stderr). The descriptor cache goes to a folder of its own.
fn run_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let cache = tempfile::tempdir().unwrap();
    let out = Command::new(binary())
        .args(args)
        .current_dir(dir)
        .env("XDG_CACHE_HOME", cache.path())
        .output()
        .expect("run protoserve");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_quick_start_and_adding_an_rpc_work_as_the_readme_says() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let quick_start = section(&readme, "## Quick start");
    let adding = section(&readme, "## Adding an RPC");
    let project = Project::shipped();
    let server = project.start(&[]);

    // Quick start: the tutorial's services, described by reflection, answer the calls shown.
    let client = reflected_client(&server, &["helloworld.Greeter", "routeguide.RouteGuide"]).await;
    let services = list_services(client.channel.clone()).await;
    for service in ["helloworld.Greeter", "routeguide.RouteGuide"] {
        assert!(services.iter().any(|s| s == service), "{services:?}");
    }
    let calls: Vec<ShellCall> = blocks(quick_start, "sh")
        .iter()
        .flat_map(|b| shell_calls(b))
        .collect();
    assert!(
        calls.iter().any(|c| c.reply.is_some()) && calls.len() >= 2,
        "{calls:?}"
    );
    for call in &calls {
        make(&client, call).await;
    }
    // The worked example's "Try it", on the same server.
    let try_it: Vec<ShellCall> = blocks(section(&readme, "## Scripts"), "sh")
        .iter()
        .flat_map(|b| shell_calls(b))
        .collect();
    assert!(!try_it.is_empty());
    for call in &try_it {
        make(&client, call).await;
    }

    // Adding an RPC, step 1: the rpc line goes into the service in the .proto the README names.
    assert!(
        adding.contains("`protos/helloworld.proto`")
            && adding.contains("`handlers/helloworld.json`"),
        "the steps name the files they edit"
    );
    let rpc = blocks(adding, "proto")[0].trim().to_owned();
    let name = rpc.split_whitespace().nth(1).expect("rpc NAME").to_owned();
    let method = format!("helloworld.Greeter/{name}");
    let proto = std::fs::read_to_string(project.path("protos/helloworld.proto")).unwrap();
    assert!(
        !proto.contains(&format!("rpc {name} ")),
        "the shipped project already has {name}: step 1 would declare it twice"
    );
    let service = proto.find("service Greeter {").expect("service Greeter");
    let close = service + proto[service..].find("\n}").expect("its end") + 1;
    project.write(
        "protos/helloworld.proto",
        &format!("{}  {rpc}\n{}", &proto[..close], &proto[close..]),
    );
    server.wait_for_log("generation 2 serving");
    // Declared without a handler: UNIMPLEMENTED, naming the method and the missing handler.
    let client = reflected_client(&server, &["helloworld.Greeter"]).await;
    let status = client
        .unary(&method, json!({"name": "you"}))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert!(
        status.message().contains(&method) && status.message().contains("no handler"),
        "{status:?}"
    );

    // Step 2: the entry goes into "methods" of the service's handler file.
    let entry = blocks(adding, "json")[0].trim().to_owned();
    let handlers = std::fs::read_to_string(project.path("handlers/helloworld.json")).unwrap();
    let methods_end = handlers.rfind("\n  }").expect("the end of \"methods\"");
    let edited = format!(
        "{},\n    {entry}{}",
        &handlers[..methods_end],
        &handlers[methods_end..]
    );
    let parsed: Json = serde_json::from_str(&edited).expect("the edited file is JSON");
    assert!(parsed["methods"][&name].is_object(), "{edited}");
    project.write("handlers/helloworld.json", &edited);

    // Step 3: saved, reloaded; the new method answers as the README shows.
    server.wait_for_log("generation 3 serving");
    let client = reflected_client(&server, &["helloworld.Greeter"]).await;
    let step_3: Vec<ShellCall> = blocks(adding, "sh")
        .iter()
        .flat_map(|b| shell_calls(b))
        .collect();
    assert!(
        step_3
            .iter()
            .any(|c| c.method == method && c.reply.is_some()),
        "{step_3:?}"
    );
    for call in &step_3 {
        make(&client, call).await;
    }

    // `protoserve check` passes and `protoserve list` prints the README's listing, exactly.
    let (code, out, err) = run_in(&project.path(""), &["check"]);
    assert_eq!(code, 0, "{out}{err}");
    let listing = blocks(adding, "text")[0].clone();
    let expected = listing
        .strip_prefix("$ protoserve list\n")
        .expect("the block starts with the command");
    let (code, out, err) = run_in(&project.path(""), &["list"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("{expected}\n"), "{err}");
}

/// The `text` blocks of `section` that show `$ protoserve check`: what it prints, each.
fn check_outputs(section: &str) -> Vec<String> {
    blocks(section, "text")
        .into_iter()
        .filter_map(|b| Some(b.strip_prefix("$ protoserve check\n")?.to_owned()))
        .collect()
}

/// Writes `files` (path, text) under a new temporary folder.
fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    common::project_folder(files)
}

#[test]
fn mistakes_are_reported_as_the_readme_shows() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = section(&readme, "## Mistakes are caught at startup");
    let shown = check_outputs(section);
    assert_eq!(shown.len(), 2, "{section}");
    assert!(section.contains("`serve` and `check` exit with status 2 when anything is wrong"));

    // A broken .proto, with an excerpt of its source.
    let broken = tree(&[(
        "protos/shop.proto",
        "syntax = \"proto3\";\nmessage Item {\n  string id = 1;\n  string sku = 2\n  int32 count = 3;\n}\n",
    )]);
    let (code, out, err) = run_in(broken.path(), &["check"]);
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(err, format!("{}\n", shown[0]));

    // Once the protos compile: every data, handler and script problem in one go.
    let greeter = std::fs::read_to_string(repo().join("protos/helloworld.proto")).unwrap();
    let mistakes = tree(&[
        ("protos/helloworld.proto", &greeter),
        ("data/points.json", "{\n  \"a\": 1,\n  \"b\": [1,]\n}\n"),
        (
            "handlers/a.json",
            r#"{
  "service": "helloworld.Greeter",
  "methods": {
    "SayHelo": { "reply": { "message": "Hello" } },
    "SayHello": { "script": "greet.lua" },
    "SayHelloAgain": { "reply": { "message": "{{nam}}" } }
  }
}
"#,
        ),
        (
            "handlers/greet.lua",
            "function SayHello(req)\n  return { message = \"hi\"\nend\n",
        ),
    ]);
    let (code, out, err) = run_in(mistakes.path(), &["check"]);
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(err, format!("{}\n", shown[1]));
}
