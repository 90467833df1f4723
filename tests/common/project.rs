//! A scratch copy of the shipped project in a temporary folder, for tests that edit the files
//! a running server serves.

use std::path::PathBuf;

use super::{pool, Client, Server};

/// A copy of the shipped project plus a `live.Live` service answered by a declarative bidi
/// handler, in a temporary folder.
pub struct Project {
    dir: tempfile::TempDir,
}

pub const LIVE_PROTO: &str = r#"syntax = "proto3";
package live;
service Live {
  rpc Chat (Line) returns (Line);
  rpc Talk (stream Line) returns (stream Line);
}
message Line { string text = 1; }
"#;

pub fn live_handler(word: &str) -> String {
    format!(
        r#"{{
  "service": "live.Live",
  "methods": {{
    "Chat": {{ "reply": {{ "text": "{word}: {{{{text}}}}" }} }},
    "Talk": {{ "reply": {{ "text": "{word}: {{{{text}}}}" }} }}
  }}
}}
"#
    )
}

impl Project {
    pub fn new() -> Project {
        let p = Project::shipped();
        p.write("protos/live.proto", LIVE_PROTO);
        p.write("handlers/live.json", &live_handler("v1"));
        p
    }

    /// A copy of the shipped project alone: `protos/`, `handlers/` and `data/` as they are.
    pub fn shipped() -> Project {
        let dir = tempfile::tempdir().unwrap();
        let repo = super::repo();
        for sub in ["protos", "handlers", "data"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
            for entry in std::fs::read_dir(repo.join(sub)).unwrap() {
                let entry = entry.unwrap();
                std::fs::copy(entry.path(), dir.path().join(sub).join(entry.file_name())).unwrap();
            }
        }
        Project { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes through a temporary file and a rename, as editors and `git checkout` do.
    pub fn write(&self, rel: &str, text: &str) {
        let path = self.path(rel);
        let tmp = path.with_extension("partial~");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }

    pub fn args(&self) -> Vec<String> {
        ["protos", "handlers", "data"]
            .iter()
            .flat_map(|d| [format!("--{d}"), self.path(d).display().to_string()])
            .collect()
    }

    pub fn start(&self, extra: &[&str]) -> Server {
        let mut args: Vec<String> = self.args();
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start(&refs)
    }

    pub async fn client(&self, server: &Server) -> Client {
        Client::connect(server.addr, pool(&self.path("protos"))).await
    }
}
