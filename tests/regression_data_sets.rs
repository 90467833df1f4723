//! Regressions of data sets (`data/*.json`) and what they cost the server.
//!
//! - A data set was kept parsed as a `serde_json::Value` for the server's lifetime (about 14
//!   times its file's size), and the script pool took a deep copy of it to build replacement
//!   states: a 7 MB file made the server peak 260 MB above a server without it, with one Lua
//!   state. The file's text is kept now and each state builds its tables straight from it.
//! - A data file nested more than 128 deep, valid JSON, was reported as "not valid JSON:
//!   recursion limit exceeded"; it says what the limit is now.
//! - An array with a `null` in it, built one item at a time, kept the items after the `null`
//!   where `#` does not count them: `#` of `[{…}, null, {…}]` was 1. It is 3 again, as it was
//!   when arrays were built from a parsed copy of the file.
//! - A `.json` file in a subfolder of the data folder (`data/geo/points.json`) was not read, and
//!   nothing said so: a script then met "no such data set" with no word of why. `check` and
//!   `serve` now warn, naming the folder, a file and where data sets are read from.
//! - A key given twice in one object of a data set was accepted, and scripts saw the last
//!   value; each repeat is a problem at its line and column now, naming the line of the first.
//! - A key given twice in each of many nested objects cost the square of the file: each repeat
//!   spelled its object's path in full, so a 60 KB data set made `check` print 26 MB. A long
//!   path keeps its start and end around an ellipsis now.
//! - A data set with a key given twice and a mistake after it was reported for the repeat
//!   alone (its check stopped there); the mistake is named too now, as in a handler file.

mod common;

use std::path::Path;

use common::{pool, Client, Server};
use serde_json::json;

/// A project serving `helloworld.Greeter/SayHello` from a script that reads `data.big`, with
/// `big` as `data/big.json` (or no data set).
fn project(big: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["protos", "handlers", "data"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
    }
    std::fs::copy(
        common::repo().join("protos/helloworld.proto"),
        dir.path().join("protos/helloworld.proto"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("handlers/greeter.json"),
        r#"{"service": "helloworld.Greeter", "methods": {"SayHello": {"script": "greeter.lua"}}}"#,
    )
    .unwrap();
    let script = if big.is_some() {
        "function SayHello(req) return { message = #data.big .. ' ' .. data.big[#data.big].name } end"
    } else {
        "function SayHello(req) return { message = 'no data' } end"
    };
    std::fs::write(dir.path().join("handlers/greeter.lua"), script).unwrap();
    if let Some(text) = big {
        std::fs::write(dir.path().join("data/big.json"), text).unwrap();
    }
    dir
}

/// `protoserve check` of the project in `dir`: its exit code, stdout and stderr.
fn check(dir: &Path) -> (i32, String, String) {
    let arg = |sub: &str| dir.join(sub).display().to_string();
    common::run(&[
        "check",
        "--protos",
        &arg("protos"),
        "--handlers",
        &arg("handlers"),
        "--data",
        &arg("data"),
    ])
}

fn start(dir: &Path) -> Server {
    let arg = |sub: &str| dir.join(sub).display().to_string();
    let (protos, handlers, data) = (arg("protos"), arg("handlers"), arg("data"));
    Server::start(&[
        "--protos",
        &protos,
        "--handlers",
        &handlers,
        "--data",
        &data,
        "--script-states",
        "1",
    ])
}

/// 40 000 features like route_guide_db's, about 5 MB of JSON.
fn features() -> String {
    let items: Vec<_> = (0..40_000)
        .map(|i| {
            json!({
                "name": format!("feature number {i}"),
                "location": {"latitude": 400_000_000 + i * 7, "longitude": -740_000_000 - i * 13},
                "tags": ["a", "b", "c"],
                "score": f64::from(i) / 3.0,
            })
        })
        .collect();
    serde_json::to_string(&items).unwrap()
}

/// The server's peak memory with a 5 MB data set stays within 25 times the file's size above
/// the same server without it (its Lua tables take about ten times the file, and parsing it,
/// once, 14 times).
#[tokio::test]
async fn a_big_data_set_costs_its_tables_not_parsed_copies() {
    let text = features();
    let without = project(None);
    let reference = start(without.path());
    let baseline = common::proc_status_kib(reference.pid(), "VmHWM");
    drop(reference);

    let with = project(Some(&text));
    let server = start(with.path());
    let client = Client::connect(server.addr, pool(&with.path().join("protos"))).await;
    let reply = client
        .unary("helloworld.Greeter/SayHello", json!({"name": "x"}))
        .await
        .unwrap();
    assert_eq!(reply["message"], "40000 feature number 39999");
    let peak = common::proc_status_kib(server.pid(), "VmHWM");
    let grown = peak.saturating_sub(baseline) * 1024;
    let size = text.len() as u64;
    eprintln!(
        "{} MB of data: peak {} MiB above the server without it ({:.1} times the file)",
        size / 1_000_000,
        grown >> 20,
        grown as f64 / size as f64
    );
    assert!(
        grown < 25 * size,
        "a {size}-byte data set made the server peak {} MiB higher",
        grown >> 20
    );
}

#[test]
fn data_nested_too_deep_is_not_called_invalid() {
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let dir = project(Some(&deep));
    let (code, _, err) = check(dir.path());
    assert_eq!(code, 2, "{err}");
    let file = dir.path().join("data/big.json").display().to_string();
    assert!(
        err.contains(&format!(
            "{file}:1:128: arrays and objects nested more than 128 deep"
        )),
        "{err}"
    );
    assert!(!err.contains("not valid JSON"), "{err}");
}

/// `#` of a data set's array counts the items after a `null` (which reads as `nil`), as the
/// array's size in the file.
#[tokio::test]
async fn a_data_array_with_a_null_keeps_its_length() {
    let dir = project(Some(
        r#"[{"name": "a"}, null, {"name": "b"}, null, {"name": "c"}]"#,
    ));
    let server = start(dir.path());
    let client = Client::connect(server.addr, pool(&dir.path().join("protos"))).await;
    let reply = client
        .unary("helloworld.Greeter/SayHello", json!({"name": "x"}))
        .await
        .unwrap();
    assert_eq!(reply["message"], "5 c", "length and last item of the array");
}

/// Data files in a subfolder of the data folder are named in a warning by `check` and `serve`
/// alike, which still start: data sets are the files directly in the folder.
#[test]
fn data_files_in_a_subfolder_are_named_as_not_read() {
    let dir = project(Some("[]"));
    std::fs::create_dir(dir.path().join("data/geo")).unwrap();
    std::fs::write(dir.path().join("data/geo/points.json"), "[]").unwrap();
    std::fs::write(dir.path().join("data/geo/.points.json"), "[]").unwrap();
    std::fs::create_dir(dir.path().join("data/.hidden")).unwrap();
    std::fs::write(dir.path().join("data/.hidden/secret.json"), "[]").unwrap();
    let arg = |sub: &str| dir.path().join(sub).display().to_string();
    let (code, _, err) = check(dir.path());
    assert_eq!(code, 0, "{err}");
    let said = |text: &str| {
        text.contains("WARN")
            && text.contains(&arg("data/geo"))
            && text.contains("1 .json file(s) in this folder, such as geo/points.json")
            && text.contains("not data sets")
            && !text.contains("secret.json")
    };
    assert!(said(&err), "{err}");
    let server = start(dir.path());
    assert!(said(&server.log().join("\n")), "{:?}", server.log());
}

/// A data set with keys given twice is refused by `check` and at startup, each at its second
/// occurrence, naming the line of the first: a script used to see the last value of each
/// (`data.big[2].name` was "c") and nobody was told of the other.
#[test]
fn keys_given_twice_in_a_data_set_are_refused_where_they_repeat() {
    let text = "[\n  {\"name\": \"a\", \"location\": {\"latitude\": 1, \"longitude\": 2, \"latitude\": 3}},\n  {\"name\": \"b\", \"name\": \"c\"}\n]\n";
    let dir = project(Some(text));
    let file = dir.path().join("data/big.json").display().to_string();
    let wanted = [
        format!("{file}:2:61: duplicate key \"latitude\" in [0].location: the first is at line 2, column 30; "),
        format!("{file}:3:17: duplicate key \"name\" in [1]: the first is at line 3, column 4; "),
    ];
    let (code, _, err) = check(dir.path());
    assert_eq!(code, 2, "{err}");
    for wanted in &wanted {
        assert!(err.contains(wanted), "{wanted:?} missing in:\n{err}");
    }
    assert!(
        err.contains("help: keep one \"name\" in this object"),
        "{err}"
    );
    assert!(err.contains("2 problem(s) found"), "{err}");

    let arg = |sub: &str| dir.path().join(sub).display().to_string();
    let (code, _, err) = common::run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "off",
        "--protos",
        &arg("protos"),
        "--handlers",
        &arg("handlers"),
        "--data",
        &arg("data"),
    ]);
    assert_eq!(code, 2, "{err}");
    for wanted in &wanted {
        assert!(err.contains(wanted), "{wanted:?} missing in:\n{err}");
    }
}

/// The same key in different objects, or as a value, is no repeat: a data set of a thousand
/// objects alike loads.
#[test]
fn the_same_key_in_different_objects_is_no_repeat() {
    let items: Vec<String> = (0..1000)
        .map(|i| format!(r#"{{"name": "name", "tags": {{"name": {i}}}, "n": [{{"name": 1}}]}}"#))
        .collect();
    let dir = project(Some(&format!("[{}]", items.join(",\n"))));
    let (code, _, err) = check(dir.path());
    assert_eq!(code, 0, "{err}");
}

/// A data set with a key given twice in each of 5 000 nested objects (60 KB) names each
/// repeat's object in a few words: each was spelled in full (`k.k.k…`), so `check` printed
/// 26 MB, and a data set of a megabyte would have taken gigabytes.
#[test]
fn repeats_in_deeply_nested_data_objects_name_their_objects_briefly() {
    let depth = 5_000;
    let text = common::nested_repeats(depth);
    let dir = project(Some(&text));
    let (code, _, err) = check(dir.path());
    assert_eq!(code, 2, "{}", &err[..err.len().min(2000)]);
    common::assert_nested_repeats_named_briefly(&err, "big.json", depth);
}

/// A data set with a key given twice and a mistake after it names both, as a handler file
/// does: the check stopped at the repeat, so the mistake was found only once it was fixed.
#[test]
fn a_data_set_with_a_repeat_and_a_later_mistake_names_both() {
    let dir = project(Some("{\"a\": 1, \"a\": 2,\n \"b\": [1,, 2]}"));
    let file = dir.path().join("data/big.json").display().to_string();
    let (code, _, err) = check(dir.path());
    assert_eq!(code, 2, "{err}");
    for wanted in [
        format!("{file}:1:10: duplicate key \"a\": the first is at line 1, column 2"),
        format!("{file}:2:10: not valid JSON: expected value"),
    ] {
        assert!(err.contains(&wanted), "{wanted:?} missing in:\n{err}");
    }
    assert!(err.contains("2 problem(s) found"), "{err}");
}

/// One data file that is not valid JSON is reported alone: scripts that read the other data
/// sets are not each reported as reading "no such data set" (with the data folder left out of
/// the path, as if the file did not exist).
#[test]
fn a_bad_data_file_is_reported_without_a_false_error_per_script_that_reads_data() {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["protos", "handlers", "data"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
        for entry in std::fs::read_dir(common::repo().join(sub)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.path().join(sub).join(entry.file_name())).unwrap();
        }
    }
    // The shipped project's route guide script reads data.route_guide_db as it loads.
    assert!(dir.path().join("data/route_guide_db.json").is_file());
    std::fs::write(dir.path().join("data/bad.json"), "{\"a\":\n").unwrap();
    let (code, out, err) = check(dir.path());
    assert_ne!(code, 0, "check must refuse a bad data file: {out}{err}");
    assert!(err.contains("bad.json"), "the bad file is named: {err}");
    assert!(
        !err.contains("no such data set") && !err.contains("route_guide.lua"),
        "only the data error is reported: {err}"
    );
}
