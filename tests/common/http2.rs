//! Raw HTTP/2 bytes, for tests that speak to the server below any client library.

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One HTTP/2 frame: 9-byte header (length, type, flags, stream id) and payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Frame types.
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

/// Flags.
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const ACK: u8 = 0x1;

/// Error codes (RFC 9113, section 7).
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const FLOW_CONTROL_ERROR: u32 = 0x3;
pub const CANCEL: u32 = 0x8;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// The header block of a gRPC call to `path` in HPACK, with no dynamic table entries (so it
/// may be sent any number of times): `:method POST`, `:scheme http` indexed, the rest literal.
pub fn call_headers(path: &str) -> Vec<u8> {
    let mut block = vec![0x83, 0x86, 0x04, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x01, 1, b'x', 0x0f, 0x10, 16]);
    block.extend_from_slice(b"application/grpc");
    block.extend_from_slice(&[0x00, 2, b't', b'e', 8]);
    block.extend_from_slice(b"trailers");
    block
}

/// DATA carrying one uncompressed gRPC message, ending the request.
pub fn grpc_message(stream: u32, message: &[u8]) -> Vec<u8> {
    let mut payload = vec![0];
    payload.extend_from_slice(&(message.len() as u32).to_be_bytes());
    payload.extend_from_slice(message);
    frame(DATA, END_STREAM, stream, &payload)
}

/// WINDOW_UPDATE adding `increment` to the window of `stream` (0: the connection's).
pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

/// RST_STREAM of `stream` with error `code`.
pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

/// Follows the frames a server writes: the error code of its GOAWAY and its RST_STREAM frames.
#[derive(Debug, Default)]
pub struct Watch {
    pending: Vec<u8>,
    /// The error code of the server's GOAWAY, once one arrived.
    pub goaway: Option<u32>,
    /// The RST_STREAM frames sent: stream and error code.
    pub resets: Vec<(u32, u32)>,
    /// The last stream id of each GOAWAY, in order.
    pub goaways: Vec<u32>,
    /// The streams the server sent HEADERS on (a response, or trailers).
    pub answered: Vec<u32>,
    /// The payloads of the PINGs sent (not their ACKs).
    pub pings: Vec<[u8; 8]>,
    /// SETTINGS frames sent (not their ACKs).
    pub settings: usize,
}

impl Watch {
    pub fn feed(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        let mut at = 0;
        while self.pending.len() - at >= 9 {
            let h = &self.pending[at..];
            let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
            if h.len() < 9 + len {
                break;
            }
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            match h[3] {
                GOAWAY if len >= 8 => {
                    self.goaway = Some(u32::from_be_bytes([h[13], h[14], h[15], h[16]]));
                    let last = u32::from_be_bytes([h[9], h[10], h[11], h[12]]) & 0x7fff_ffff;
                    self.goaways.push(last);
                }
                HEADERS if self.answered.len() < 100_000 => self.answered.push(stream),
                PING if len == 8 && h[4] & ACK == 0 && self.pings.len() < 100_000 => {
                    self.pings.push(h[9..17].try_into().unwrap());
                }
                SETTINGS if h[4] & ACK == 0 => self.settings += 1,
                RST_STREAM if len == 4 => {
                    let code = u32::from_be_bytes([h[9], h[10], h[11], h[12]]);
                    // Bounded: a flood may be answered with many.
                    if self.resets.len() < 100_000 {
                        self.resets.push((stream, code));
                    }
                }
                _ => {}
            }
            at += 9 + len;
        }
        self.pending.drain(..at);
    }
}

/// The call's gRPC status and message, `code: message`.
pub async fn status_of(resp: h2::client::ResponseFuture) -> String {
    let (parts, mut stream) = match resp.await {
        Ok(r) => r.into_parts(),
        Err(e) => return format!("reset: {e}"),
    };
    let headers = parts.headers;
    if let Some(code) = headers.get("grpc-status") {
        let message = headers.get("grpc-message").map(|m| m.to_str().unwrap());
        return format!("{}: {}", code.to_str().unwrap(), message.unwrap_or(""));
    }
    while let Some(chunk) = stream.data().await {
        match chunk {
            Ok(chunk) => {
                let _ = stream.flow_control().release_capacity(chunk.len());
            }
            Err(e) => return format!("reset: {e}"),
        }
    }
    match stream.trailers().await {
        Ok(Some(t)) => format!(
            "{}: {}",
            t["grpc-status"].to_str().unwrap(),
            t.get("grpc-message").map_or("", |m| m.to_str().unwrap())
        ),
        other => format!("no trailers: {other:?}"),
    }
}
