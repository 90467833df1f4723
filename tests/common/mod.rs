//! Test support: start the real `protoserve` binary on a loopback port and call it with a
//! dynamic tonic client (descriptors from protox, messages as JSON).

#![allow(dead_code)]

pub mod gzip;
pub mod http2;
pub mod project;
pub mod reflection;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor};
use protoserve::codec::{Incoming, Outgoing, OutgoingEncoder};
use serde_json::Value as Json;
use tokio_stream::StreamExt;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Request, Status};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    repo().join("tests/fixtures")
}

/// The binary under test: this build's, or `PROTOSERVE_TEST_BIN` (to run the suite against
/// another build, such as an older release).
pub fn binary() -> PathBuf {
    std::env::var_os("PROTOSERVE_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_protoserve")))
}

/// A running server process; killed on drop.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    /// The admin API's address, unless the server runs with `--admin off`.
    pub admin: Option<SocketAddr>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `protoserve serve --listen 127.0.0.1:0 ARGS…` and waits for its listening line.
    /// The admin API listens on a free loopback port (`--admin 127.0.0.1:0`) unless ARGS say
    /// otherwise, so servers started in parallel never share one.
    pub fn start(args: &[&str]) -> Server {
        Self::start_with_env(args, &[])
    }

    /// [`Server::start`] with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut command = Command::new(binary());
        command.envs(env.iter().copied());
        Self::start_command(command, args)
    }

    /// [`Server::start`] through `command`, which runs the binary under test with what follows
    /// (the binary itself, or a wrapper that starts it).
    pub fn start_command(mut command: Command, args: &[&str]) -> Server {
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(args);
        if !args.contains(&"--admin") {
            command.args(["--admin", "127.0.0.1:0"]);
        }
        let mut child = command
            .current_dir(repo())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start protoserve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        let admin_line = Arc::new(Mutex::new(None));
        let admin_seen = admin_line.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(i) = line.find("admin API on http://") {
                    let addr: String = line[i + 20..]
                        .chars()
                        .take_while(|c| !c.is_whitespace())
                        .collect();
                    *admin_seen.lock().unwrap() = addr.parse::<SocketAddr>().ok();
                }
                if let Some(i) = line.find("listening on ") {
                    let addr = line[i + 13..]
                        .split(':')
                        .take(2)
                        .collect::<Vec<_>>()
                        .join(":");
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a.parse().expect("listening address"),
            Err(_) => {
                let _ = child.kill();
                panic!("protoserve did not start: {:?}", log.lock().unwrap());
            }
        };
        // The admin line comes before the listening line.
        let admin = *admin_line.lock().unwrap();
        Server {
            child,
            addr,
            admin,
            log,
        }
    }

    /// The admin API's address (panics with `--admin off`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.expect("the server has no admin API")
    }

    /// An admin API request: (HTTP status, JSON body).
    pub async fn admin_call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Json) {
        let (status, bytes) = protoserve::admin::client::request(
            &self.admin_addr().to_string(),
            method.parse().unwrap(),
            path,
            token,
            body.map(|b| Bytes::from(b.to_owned())),
        )
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let json = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{method} {path}: answer is not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        });
        (status.as_u16(), json)
    }

    /// `GET path` on the admin API, which must answer 200.
    pub async fn admin_get(&self, path: &str) -> Json {
        let (status, json) = self.admin_call("GET", path, None, None).await;
        assert_eq!(status, 200, "GET {path}: {json:#}");
        json
    }

    /// `POST path` with a JSON body on the admin API: (HTTP status, JSON body).
    pub async fn admin_post(&self, path: &str, body: &Json) -> (u16, Json) {
        self.admin_call("POST", path, None, Some(&body.to_string()))
            .await
    }

    /// The repository's own protos, handlers and data.
    pub fn repo_default() -> Server {
        Server::start(&[])
    }

    /// The test fixtures (every shape, most field types).
    pub fn kitchen() -> Server {
        Server::kitchen_args(&[])
    }

    /// [`Server::kitchen`] with `extra` arguments.
    pub fn kitchen_args(extra: &[&str]) -> Server {
        let f = fixtures();
        let (protos, handlers) = (f.join("protos"), f.join("handlers"));
        let mut args = vec![
            "--protos",
            protos.to_str().unwrap(),
            "--handlers",
            handlers.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        Server::start(&args)
    }

    /// The fixture protos with `file` as the only handler file (`k.json` in a temporary folder,
    /// returned to be kept as long as the server), unwatched, with `extra` arguments.
    pub fn kitchen_with(file: &str, extra: &[&str]) -> (Server, tempfile::TempDir) {
        let handlers = tempfile::tempdir().unwrap();
        std::fs::write(handlers.path().join("k.json"), file).unwrap();
        let protos = fixtures().join("protos");
        let mut args = vec![
            "--protos",
            protos.to_str().unwrap(),
            "--handlers",
            handlers.path().to_str().unwrap(),
            "--no-watch",
        ];
        args.extend_from_slice(extra);
        (Server::start(&args), handlers)
    }

    /// The lab fixtures (script methods for limits and timing), with `extra` arguments.
    pub fn lab(extra: &[&str]) -> Server {
        let f = fixtures();
        let (protos, handlers, data) = (f.join("protos"), f.join("lab_handlers"), f.join("data"));
        let mut args = vec![
            "--protos",
            protos.to_str().unwrap(),
            "--handlers",
            handlers.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        Server::start(&args)
    }

    /// The server's process id (for reading `/proc/PID/status`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits (bounded, 20 s) until a log line contains `needle`, and gives that line.
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(line) = self.log().into_iter().find(|l| l.contains(needle)) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?}: {:#?}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends SIGTERM and returns at once.
    pub fn send_term(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// The exit status, if the process ends within `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A memory figure of process `pid` from `/proc/PID/status` (`VmRSS`, `VmHWM`…), in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// Threads of `server`'s process now.
pub fn threads(server: &Server) -> u64 {
    proc_status_kib(server.pid(), "Threads")
}

/// Resident memory of `server`'s process now, in MiB.
pub fn rss_mib(server: &Server) -> u64 {
    proc_status_kib(server.pid(), "VmRSS") / 1024
}

/// `PUT /v1/handlers/METHOD` with `entry`, which must be taken (200).
pub async fn put_handler(server: &Server, method: &str, entry: &Json) {
    let (status, body) = server
        .admin_call(
            "PUT",
            &format!("/v1/handlers/{method}"),
            None,
            Some(&entry.to_string()),
        )
        .await;
    assert_eq!(status, 200, "PUT {method}: {body:#}");
}

/// Runs `protoserve ARGS…` to completion: (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary())
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run protoserve");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `cmd` from the repo with stderr captured, killing it if it still runs after 30 s: its
/// exit code (none when it had to be killed) and what it wrote to stderr.
pub fn run_bounded(mut cmd: Command) -> (Option<i32>, String) {
    let mut child = cmd
        .current_dir(repo())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run protoserve");
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    (code, err)
}

/// A raw HTTP/2 connection to the server at `addr`, for tests that send frames one by one.
pub async fn h2_connect(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// An HTTP/2 connection to `addr` with one call in flight: a `SayHello` whose request never
/// ends. The call lasts as long as the returned parts are held.
pub async fn call_in_flight(
    addr: SocketAddr,
) -> (
    h2::client::SendRequest<Bytes>,
    h2::SendStream<Bytes>,
    h2::client::ResponseFuture,
) {
    let conn = h2_connect(addr).await;
    let mut ready = conn.clone().ready().await.unwrap();
    let req = grpc_request(addr, "/helloworld.Greeter/SayHello")
        .body(())
        .unwrap();
    let (resp, body) = ready.send_request(req, false).unwrap();
    (conn, body, resp)
}

/// The head of a gRPC call to `path` (`/package.Service/Method`) on the server at `addr`, for a
/// raw HTTP/2 client; add headers, then `.body(())`.
pub fn grpc_request(addr: SocketAddr, path: &str) -> http::request::Builder {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
}

/// Compiles protos the way the server does, for the client side.
pub fn pool(protos: &Path) -> DescriptorPool {
    protoserve::schema::compile(&protoserve::schema::SchemaInputs::protos(&[
        protos.to_path_buf()
    ]))
    .expect("compile protos")
    .pool
}

/// A plain gRPC channel to `addr`, for the generated clients (reflection, health).
pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect")
}

/// A dynamic gRPC client: methods by full name, messages as proto3 JSON.
#[derive(Clone)]
pub struct Client {
    pub pool: DescriptorPool,
    pub channel: Channel,
}

pub type Call<T> = Result<(T, MetadataMap), Status>;

/// A server of the protos in `protos` and the handlers in `handlers` (and `extra` arguments).
pub fn start_folders(protos: &Path, handlers: &Path, extra: &[&str]) -> Server {
    let mut args = vec![
        "--protos",
        protos.to_str().unwrap(),
        "--handlers",
        handlers.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// A server of the protos in `protos` and the handlers in `handlers` (and `extra` arguments),
/// and a client of it.
pub async fn serve_folders(protos: &Path, handlers: &Path, extra: &[&str]) -> (Server, Client) {
    let server = start_folders(protos, handlers, extra);
    let client = Client::connect(server.addr, pool(protos)).await;
    (server, client)
}

/// A project in a temporary folder: each `(path, text)` of `files` written under it
/// (`protos/x.proto`, `handlers/x.json`, …), folders made as needed.
pub fn project_folder(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

/// A server of `files` (see [`project_folder`]: its `protos` and `handlers`, with `extra`
/// arguments), a client of it, and the folder, which lives as long as it is held.
pub async fn serve_files(
    files: &[(&str, &str)],
    extra: &[&str],
) -> (Server, Client, tempfile::TempDir) {
    let dir = project_folder(files);
    let (server, client) = serve_folders(
        &dir.path().join("protos"),
        &dir.path().join("handlers"),
        extra,
    )
    .await;
    (server, client, dir)
}

/// A server of the repository's protos (not watched) and the handler `files` (name, text) in
/// a temporary folder, with `extra` arguments; a client of it, and the folder.
pub async fn serve_repo_protos_with(
    files: &[(&str, &str)],
    extra: &[&str],
) -> (Server, Client, tempfile::TempDir) {
    let handlers = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(handlers.path().join(name), text).unwrap();
    }
    let mut args = vec![
        "--handlers",
        handlers.path().to_str().unwrap(),
        "--no-watch",
    ];
    args.extend_from_slice(extra);
    let server = Server::start(&args);
    let client = Client::connect(server.addr, pool(&repo().join("protos"))).await;
    (server, client, handlers)
}

/// Calls `method` with `request` every 5 ms for `span`, each call answered with `expected` as
/// its `text`; the longest one took, and how many were made. Started before a call that might
/// hold the server up, it says how long others waited meanwhile.
pub fn probe(
    client: &Client,
    method: &'static str,
    expected: &'static str,
    span: Duration,
) -> tokio::task::JoinHandle<(Duration, usize)> {
    let client = client.clone();
    tokio::spawn(async move {
        let (mut worst, mut calls) = (Duration::ZERO, 0);
        let until = Instant::now() + span;
        while Instant::now() < until {
            let started = Instant::now();
            let out = client.unary(method, serde_json::json!({})).await.unwrap();
            assert_eq!(out["text"], expected, "{method}");
            worst = worst.max(started.elapsed());
            calls += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (worst, calls)
    })
}

impl Client {
    pub async fn connect(addr: SocketAddr, pool: DescriptorPool) -> Client {
        Client {
            pool,
            channel: channel(addr).await,
        }
    }

    /// A client that accepts header lists of at most 8 KiB, as grpc-java's does by default.
    pub async fn connect_8k(addr: SocketAddr, pool: DescriptorPool) -> Client {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .http2_max_header_list_size(8192)
            .connect()
            .await
            .expect("connect");
        Client { pool, channel }
    }

    pub fn method(&self, name: &str) -> MethodDescriptor {
        let (service, method) = name.rsplit_once('/').expect("Service/Method");
        self.pool
            .get_service_by_name(service)
            .unwrap_or_else(|| panic!("no service {service}"))
            .methods()
            .find(|m| m.name() == method)
            .unwrap_or_else(|| panic!("no method {name}"))
    }

    pub fn message(desc: &MessageDescriptor, json: Json) -> DynamicMessage {
        DynamicMessage::deserialize(desc.clone(), json).expect("request JSON")
    }

    fn grpc(&self) -> tonic::client::Grpc<Channel> {
        tonic::client::Grpc::new(self.channel.clone())
    }

    fn path(name: &str) -> http::uri::PathAndQuery {
        format!("/{name}").parse().unwrap()
    }

    pub async fn unary(&self, name: &str, json: Json) -> Result<Json, Status> {
        self.unary_with(name, json, MetadataMap::new())
            .await
            .map(|(j, _)| j)
    }

    pub async fn unary_with(&self, name: &str, json: Json, md: MetadataMap) -> Call<Json> {
        let m = self.method(name);
        let mut req = Request::new(Outgoing::Message(Self::message(&m.input(), json)));
        *req.metadata_mut() = md;
        let mut grpc = self.grpc();
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let resp = grpc
            .unary(req, Self::path(name), DynamicCodec::new(m.output()))
            .await?;
        let (md, msg, _) = resp.into_parts();
        Ok((to_json(&msg), md))
    }

    pub async fn server_stream(&self, name: &str, json: Json) -> Result<Vec<Json>, Status> {
        let mut stream = self.server_stream_open(name, json).await?;
        let mut out = Vec::new();
        while let Some(msg) = stream.message().await? {
            out.push(to_json(&msg));
        }
        Ok(out)
    }

    /// Starts a server-streaming call; its messages are read as they arrive.
    pub async fn server_stream_open(
        &self,
        name: &str,
        json: Json,
    ) -> Result<tonic::Streaming<DynamicMessage>, Status> {
        let m = self.method(name);
        let req = Request::new(Outgoing::Message(Self::message(&m.input(), json)));
        let mut grpc = self.grpc();
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(grpc
            .server_streaming(req, Self::path(name), DynamicCodec::new(m.output()))
            .await?
            .into_inner())
    }

    /// The method and `items` as request messages of its input type.
    fn requests(&self, name: &str, items: Vec<Json>) -> (MethodDescriptor, Vec<Outgoing>) {
        let m = self.method(name);
        let input = m.input();
        let msgs = items
            .into_iter()
            .map(|j| Outgoing::Message(Self::message(&input, j)))
            .collect();
        (m, msgs)
    }

    pub async fn client_stream(&self, name: &str, items: Vec<Json>) -> Result<Json, Status> {
        let (m, msgs) = self.requests(name, items);
        let mut grpc = self.grpc();
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let resp = grpc
            .client_streaming(
                Request::new(futures_util::stream::iter(msgs)),
                Self::path(name),
                DynamicCodec::new(m.output()),
            )
            .await?;
        Ok(to_json(resp.get_ref()))
    }

    /// Sends all `items`, then collects responses until the stream ends or fails.
    pub async fn bidi(&self, name: &str, items: Vec<Json>) -> (Vec<Json>, Option<Status>) {
        let (m, msgs) = self.requests(name, items);
        let mut grpc = self.grpc();
        if let Err(e) = grpc.ready().await {
            return (Vec::new(), Some(Status::unavailable(e.to_string())));
        }
        let resp = grpc
            .streaming(
                Request::new(futures_util::stream::iter(msgs)),
                Self::path(name),
                DynamicCodec::new(m.output()),
            )
            .await;
        let mut stream = match resp {
            Ok(r) => r.into_inner(),
            Err(s) => return (Vec::new(), Some(s)),
        };
        let mut out = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(msg)) => out.push(to_json(&msg)),
                Ok(None) => return (out, None),
                Err(s) => return (out, Some(s)),
            }
        }
    }

    /// Opens a bidi call with `first` as its first requests; later requests are sent as the
    /// test pushes them into the returned sender, and responses are read as they arrive. (The
    /// server sends response headers with its first message, so this returns once `first` has
    /// had its first answer.)
    pub async fn bidi_open(
        &self,
        name: &str,
        first: Vec<Json>,
    ) -> (
        tokio::sync::mpsc::Sender<Json>,
        Result<tonic::Streaming<DynamicMessage>, Status>,
    ) {
        let m = self.method(name);
        let input = m.input();
        let (tx, rx) = tokio::sync::mpsc::channel::<Json>(16 + first.len());
        for j in first {
            tx.try_send(j)
                .expect("the channel has room for the first requests");
        }
        let requests = tokio_stream::wrappers::ReceiverStream::new(rx)
            .map(move |j| Outgoing::Message(Self::message(&input, j)));
        let mut grpc = self.grpc();
        if let Err(e) = grpc.ready().await {
            return (tx, Err(Status::unavailable(e.to_string())));
        }
        let resp = grpc
            .streaming(
                Request::new(requests),
                Self::path(name),
                DynamicCodec::new(m.output()),
            )
            .await
            .map(|r| r.into_inner());
        (tx, resp)
    }

    /// A client-streaming call whose requests are `raw` bytes, each framed but otherwise
    /// untouched; the response as its bytes.
    pub async fn raw_client_stream(&self, path: &str, raw: Vec<Bytes>) -> Result<Bytes, Status> {
        let mut grpc = self.grpc();
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let resp = grpc
            .client_streaming(
                Request::new(futures_util::stream::iter(raw)),
                path.parse().unwrap(),
                RawCodec,
            )
            .await?;
        Ok(resp.into_inner())
    }

    /// A unary call whose body is `raw` bytes, framed but otherwise untouched.
    pub async fn raw_unary(&self, path: &str, raw: Bytes) -> Result<Bytes, Status> {
        let mut grpc = self.grpc();
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let resp = grpc
            .unary(Request::new(raw), path.parse().unwrap(), RawCodec)
            .await?;
        Ok(resp.into_inner())
    }
}

pub fn to_json(msg: &DynamicMessage) -> Json {
    serde_json::to_value(msg).expect("response to JSON")
}

/// The client's codec for a method whose types are known only at run time: sends
/// [`Outgoing`] messages, decodes each response into a [`DynamicMessage`] of `output` (with
/// the server's default decoding budget).
#[derive(Clone)]
pub struct DynamicCodec {
    output: MessageDescriptor,
}

impl DynamicCodec {
    pub fn new(output: MessageDescriptor) -> Self {
        Self { output }
    }
}

impl Codec for DynamicCodec {
    type Encode = Outgoing;
    type Decode = DynamicMessage;
    type Encoder = OutgoingEncoder;
    type Decoder = DynamicDecoder;
    fn encoder(&mut self) -> OutgoingEncoder {
        OutgoingEncoder
    }
    fn decoder(&mut self) -> DynamicDecoder {
        DynamicDecoder(self.output.clone())
    }
}

/// Decodes one response into a [`DynamicMessage`].
pub struct DynamicDecoder(MessageDescriptor);

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        let message = Incoming::new(bytes, self.0.clone()).decode()?;
        Ok(Some(message))
    }
}

/// A codec that sends and receives bytes as they are.
#[derive(Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// The folder of an npm package from `tests/stock/package.json`, installed with `npm ci` (as
/// `tests/stock/run.sh` and CI do) when it is missing.
pub fn npm_package(name: &str) -> PathBuf {
    static INSTALL: Mutex<()> = Mutex::new(());
    let stock = repo().join("tests/stock");
    let dir = stock.join("node_modules").join(name);
    let _one_at_a_time = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if !dir.join("package.json").is_file() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&stock)
            .status()
            .expect("run npm (the test needs Node.js and npm, as CI installs them)");
        assert!(status.success(), "npm ci in tests/stock failed");
    }
    assert!(dir.is_dir(), "{} missing after npm ci", dir.display());
    dir
}

/// `buf` from the npm package `@bufbuild/buf`.
pub fn buf() -> PathBuf {
    npm_package("@bufbuild/buf");
    repo().join("tests/stock/node_modules/.bin/buf")
}

/// The googleapis tree (with grafeas) from the npm package `google-proto-files`.
pub fn googleapis() -> PathBuf {
    npm_package("google-proto-files")
}

/// A JSON text of `depth` nested objects, each giving the key `k` twice (the second holding
/// the next object): a repeat in every object.
pub fn nested_repeats(depth: usize) -> String {
    format!("{}0{}", r#"{"k":0,"k":"#.repeat(depth), "}".repeat(depth))
}

/// That `err` (what `check` printed for [`nested_repeats`] of `depth` in the file `name`) names
/// every repeat, each on a short line, the deepest with its object's path shortened in the
/// middle.
pub fn assert_nested_repeats_named_briefly(err: &str, name: &str, depth: usize) {
    assert_eq!(err.matches("duplicate key \"k\"").count(), depth);
    let longest = err.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 600, "a line of {longest} bytes");
    assert!(
        err.contains(&format!(
            "{name}:1:{}: duplicate key \"k\" in {}k…{}: the first is at line 1, column {}",
            11 * depth - 3,
            "k.".repeat(19),
            ".k".repeat(40),
            11 * depth - 9
        )),
        "{}",
        &err[err.len().saturating_sub(2000)..]
    );
}

/// Runs `work` while a client of its own connection calls `path` with `body` every 2 ms;
/// what `work` returned and the slowest call. The quick calls run on a thread and runtime of
/// their own, so that the client's work on big answers does not count against the server.
pub async fn slowest_call_during<T>(
    addr: SocketAddr,
    path: &'static str,
    body: Bytes,
    work: impl std::future::Future<Output = T>,
) -> (T, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let probing = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let probe = Client::connect(addr, pool(&fixtures().join("protos"))).await;
                probe
                    .raw_unary(path, body.clone())
                    .await
                    .expect("the quick call answers");
                ready_tx.send(()).unwrap();
                let mut slowest = Duration::ZERO;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    probe
                        .raw_unary(path, body.clone())
                        .await
                        .expect("the quick call answers");
                    slowest = slowest.max(t.elapsed());
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                slowest
            })
        }
    });
    ready_rx.await.expect("the quick calls start");
    let done = work.await;
    stop.store(true, Ordering::Relaxed);
    let slowest = tokio::task::spawn_blocking(move || probing.join().unwrap())
        .await
        .unwrap();
    (done, slowest)
}

/// A protobuf length-delimited field `number` holding `value`, encoded.
pub fn len_field(number: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![(number << 3) | 2];
    let mut n = value.len();
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.extend_from_slice(value);
    out
}
