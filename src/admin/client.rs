//! A small HTTP/1.1 client for the admin API, for `protoserve verify` (and tests): one request
//! per connection, bounded in time and in the size of the answer.

use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(150);
/// The largest answer read: a page of the journal with large messages.
const MAX_ANSWER: usize = 256 * 1024 * 1024;

/// `host:port`, with or without `http://` and a trailing `/`.
pub fn authority(addr: &str) -> &str {
    let addr = addr.trim();
    let addr = addr.strip_prefix("http://").unwrap_or(addr);
    addr.trim_end_matches('/')
}

/// Sends one request to the admin API at `addr`; answers the status and the body. The error
/// says what failed, for a person.
pub async fn request(
    addr: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Bytes>,
) -> Result<(StatusCode, Bytes), String> {
    let host = authority(addr);
    let work = async {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(host))
            .await
            .map_err(|_| format!("connecting to {host} took longer than {CONNECT_TIMEOUT:?}"))?
            .map_err(|e| format!("cannot connect to {host}: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("{host}: {e}"))?;
        let conn = tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, host);
        if let Some(token) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| format!("bad request: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("{host}: {e}"))?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("{host}: reading the answer failed: {e}"))?
            .to_bytes();
        conn.abort();
        Ok((status, bytes))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, work)
        .await
        .map_err(|_| format!("{host} did not answer within {REQUEST_TIMEOUT:?}"))?
}
