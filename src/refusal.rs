//! Refusing a connection that a full listener cannot serve (every connection has a request in
//! flight, see [`crate::evict`]) with an answer the client's library shows, rather than a bare
//! close that reads as a network fault.
//!
//! The answer depends on what the client speaks: an HTTP/1 client gets `503 Service
//! Unavailable` with the listener's JSON body, an HTTP/2 client the server's SETTINGS and a GOAWAY
//! (`ENHANCE_YOUR_CALM`) whose debug data says why. What the client has sent is read before the
//! answer is written, both to tell which it speaks and so that closing does not reset the
//! connection (discarding the answer) over unread bytes. A client that has sent nothing yet is
//! waited for, up to [`FIRST_BYTES_WAIT`]; at most [`WAITING`] such connections wait at once,
//! and past that one is answered at once as the listener's usual clients speak.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// How long a refused connection may take to send its first bytes.
const FIRST_BYTES_WAIT: Duration = Duration::from_secs(1);
/// Refused connections waiting for their first bytes at once.
const WAITING: usize = 64;
/// Bytes of the client's first message read (and dropped) before answering.
const FIRST_READ: usize = 16 * 1024;

/// Refuses connections for one listener.
#[derive(Clone)]
pub struct Refusals {
    waiting: Arc<Semaphore>,
    /// Whether a client that has sent nothing is taken to speak HTTP/1 (the admin API's usual
    /// clients) rather than HTTP/2 (the gRPC port's).
    http1_first: bool,
}

impl Refusals {
    pub fn new(http1_first: bool) -> Self {
        Refusals {
            waiting: Arc::new(Semaphore::new(WAITING)),
            http1_first,
        }
    }

    /// Answers `stream` with a refusal saying `why` (in HTTP/1, `json`), then closes it.
    pub fn refuse(&self, stream: TcpStream, why: String, json: serde_json::Value) {
        let why = Why { text: why, json };
        let mut first = vec![0u8; FIRST_READ];
        if let Ok(n @ 1..) = stream.try_read(&mut first) {
            answer(&stream, self.speaks_http1(Some(&first[..n])), &why);
            return;
        }
        let Ok(permit) = self.waiting.clone().try_acquire_owned() else {
            answer(&stream, self.speaks_http1(None), &why);
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let n = match tokio::time::timeout(FIRST_BYTES_WAIT, stream.readable()).await {
                Ok(Ok(())) => stream.try_read(&mut first).unwrap_or(0),
                _ => 0,
            };
            let sent = (n > 0).then(|| &first[..n]);
            answer(&stream, this.speaks_http1(sent), &why);
        });
    }

    fn speaks_http1(&self, first: Option<&[u8]>) -> bool {
        match first {
            Some(bytes) => !bytes.starts_with(b"PRI "),
            None => self.http1_first,
        }
    }
}

/// Why a connection is refused: a sentence (HTTP/2's GOAWAY) and a JSON body (HTTP/1).
struct Why {
    text: String,
    json: serde_json::Value,
}

/// Writes the refusal, best effort: the socket's buffer is empty, so it takes it whole.
fn answer(stream: &TcpStream, http1: bool, why: &Why) {
    let bytes = if http1 {
        let body = format!("{}\n", why.json);
        format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    } else {
        goaway(&why.text)
    };
    let _ = stream.try_write(&bytes);
}

/// An empty SETTINGS frame (the server's preface) and a GOAWAY refusing every stream.
fn goaway(why: &str) -> Vec<u8> {
    const SETTINGS: u8 = 0x4;
    const GOAWAY: u8 = 0x7;
    const ENHANCE_YOUR_CALM: u32 = 0xb;
    let why = &why.as_bytes()[..why.len().min(1024)];
    let mut out = vec![0, 0, 0, SETTINGS, 0, 0, 0, 0, 0];
    let len = (8 + why.len()) as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[GOAWAY, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
    out.extend_from_slice(why);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_goaway_is_two_frames_with_the_reason() {
        let bytes = goaway("full");
        assert_eq!(&bytes[..9], &[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(&bytes[9..18], &[0, 0, 12, 7, 0, 0, 0, 0, 0]);
        assert_eq!(&bytes[18..26], &[0, 0, 0, 0, 0, 0, 0, 0xb]);
        assert_eq!(&bytes[26..], b"full");
    }
}
