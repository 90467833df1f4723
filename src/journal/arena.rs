//! The byte form of a call's record: everything with a size (the path, header blocks,
//! messages) as a run of blocks of kind, time, length and payload.
//!
//! One byte run per call keeps recording cheap: a unary call appends to one buffer while it
//! runs, and an ended call's run is copied once into the journal's store ([`super::store`]),
//! packed next to the calls that ended just before it. Readers parse a run into a
//! [`CallView`] only when someone asks.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use super::{Answerer, Direction, End, Frame, HandlerNote};
use crate::handler::MethodInfo;

/// A call's bytes while it runs.
pub type Arena = Vec<u8>;

/// The kinds of block, and how a block starts: a kind byte, then (for a timed block) the
/// microseconds since the call started as 8 bytes, then the payload's length as 4 bytes. Most
/// blocks have no time of their own (the path and headers are read at the start, a unary
/// response goes out at the end), so most headers are 5 bytes.
pub mod block {
    pub const PATH: u8 = 0;
    pub const REQUEST_HEADERS: u8 = 1;
    pub const REQUEST: u8 = 2;
    pub const RESPONSE: u8 = 3;
    pub const RESPONSE_HEADERS: u8 = 4;
    pub const TRAILERS: u8 = 5;
    /// The index of the rule that answered a request (4 bytes).
    pub const RULE: u8 = 6;
    /// The client's address: 4 bytes of IPv4 or 16 of IPv6 (then a 4-byte scope id), then
    /// the port as 2 bytes.
    pub const PEER: u8 = 7;
    /// Kind bits of the first byte.
    pub const KIND: u8 = 0x0f;
    /// Flag: the block was sent at the end of the call.
    pub const AT_END: u8 = 0x10;
    /// Flag: 8 bytes of time follow the kind.
    pub const TIMED: u8 = 0x20;
    /// The longest header.
    pub const HEADER: usize = 13;
    /// The header of a block without a time.
    pub const SHORT: usize = 5;
}

/// When a block happened.
#[derive(Clone, Copy)]
pub enum At {
    /// At the start of the call, or untimed.
    Start,
    /// At the end of the call.
    End,
    /// This many microseconds after the call started.
    Micros(u64),
}

/// What a record knows besides its bytes. Ended calls keep it in the journal's ring, so it is
/// small: the less of a slot there is, the fewer cold lines a new call reads when it takes the
/// slot of the call it evicts.
#[derive(Clone, Default)]
pub struct Facts {
    /// The method and handler, once the router found them.
    pub answerer: Option<Arc<Answerer>>,
    /// Frames not kept because the call alone exceeded the byte budget.
    pub dropped: u32,
    /// Response headers went out (apart from a Trailers-Only answer's).
    pub answered: bool,
    /// How the call ended, and when (microseconds after it started).
    pub end: Option<(End, u64)>,
}

impl Facts {
    pub fn end(&self) -> Option<(End, Duration)> {
        self.end.map(|(end, us)| (end, Duration::from_micros(us)))
    }
}

/// The blocks of a run: (kind, time or `None` for the end of the call, payload).
pub fn blocks(
    arena: &[u8],
) -> impl Iterator<Item = (u8, Option<Duration>, std::ops::Range<usize>)> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let first = *arena.get(at)?;
        let mut next = at + 1;
        let time = if first & block::TIMED != 0 {
            let micros = u64::from_le_bytes(arena.get(next..next + 8)?.try_into().ok()?);
            next += 8;
            Some(Duration::from_micros(micros))
        } else if first & block::AT_END != 0 {
            None
        } else {
            Some(Duration::ZERO)
        };
        let len = u32::from_le_bytes(arena.get(next..next + 4)?.try_into().ok()?) as usize;
        let start = next + 4;
        at = start + len;
        Some((first & block::KIND, time, start..start + len))
    })
}

/// Starts a run with the path and request headers blocks, in one pass over the headers (the
/// headers block's length is written once they are packed).
pub fn fill(arena: &mut Arena, path: &[u8], headers: &HeaderMap, peer: Option<SocketAddr>) {
    put_block_header(arena, block::PATH, At::Start, path.len());
    arena.extend_from_slice(path);
    match peer {
        Some(SocketAddr::V4(a)) => {
            put_block_header(arena, block::PEER, At::Start, 6);
            arena.extend_from_slice(&a.ip().octets());
            arena.extend_from_slice(&a.port().to_le_bytes());
        }
        Some(SocketAddr::V6(a)) => {
            put_block_header(arena, block::PEER, At::Start, 22);
            arena.extend_from_slice(&a.ip().octets());
            arena.extend_from_slice(&a.scope_id().to_le_bytes());
            arena.extend_from_slice(&a.port().to_le_bytes());
        }
        None => {}
    }
    let head = arena.len();
    put_block_header(arena, block::REQUEST_HEADERS, At::Start, 0);
    let start = arena.len();
    pack_headers(arena, headers);
    let len = u32::try_from(arena.len() - start).unwrap_or(u32::MAX);
    arena[head + 1..head + block::SHORT].copy_from_slice(&len.to_le_bytes());
}

/// The size of a block's header.
pub fn header_len(at: At) -> usize {
    match at {
        At::Micros(_) => block::HEADER,
        At::Start | At::End => block::SHORT,
    }
}

/// Appends a block's kind, time and length, as stored before its payload.
pub fn put_block_header(arena: &mut Arena, kind: u8, at: At, len: usize) {
    let len = u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes();
    match at {
        At::Start => arena.push(kind),
        At::End => arena.push(kind | block::AT_END),
        At::Micros(us) => {
            arena.push(kind | block::TIMED);
            arena.extend_from_slice(&us.to_le_bytes());
        }
    }
    arena.extend_from_slice(&len);
}

/// Headers every gRPC call has with the same value, not worth keeping.
pub fn routine(name: &http::HeaderName) -> bool {
    name == http::header::TE || name == http::header::CONTENT_TYPE
}

/// Response headers the protocol itself sets (the reply's compression and the encodings the
/// server accepts), which `response_headers` leaves out: with them a client that accepts gzip
/// would see headers no handler sent.
pub fn protocol_response_header(name: &http::HeaderName) -> bool {
    routine(name) || name.as_str() == "grpc-encoding" || name.as_str() == "grpc-accept-encoding"
}

/// The size of a header block's payload: for each entry, name length (2), value length (4),
/// name, value.
pub fn packed_len(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .filter(|(k, _)| !routine(k))
        .map(|(k, v)| 6 + k.as_str().len() + v.len())
        .sum()
}

pub fn pack_headers(arena: &mut Arena, headers: &HeaderMap) {
    for (k, v) in headers.iter().filter(|(k, _)| !routine(k)) {
        // Header names are far shorter than 64 KiB (hyper refuses longer ones).
        let name = k.as_str().as_bytes();
        let value = v.as_bytes();
        let mut head = [0u8; 6];
        head[..2].copy_from_slice(&(name.len() as u16).to_le_bytes());
        head[2..].copy_from_slice(&(value.len() as u32).to_le_bytes());
        arena.extend_from_slice(&head);
        arena.extend_from_slice(name);
        arena.extend_from_slice(value);
    }
}

fn unpack_headers(payload: &[u8]) -> HeaderMap {
    let mut out = HeaderMap::new();
    let mut at = 0;
    while let Some(head) = payload.get(at..at + 6) {
        let name_len = u16::from_le_bytes([head[0], head[1]]) as usize;
        let value_len = u32::from_le_bytes([head[2], head[3], head[4], head[5]]) as usize;
        let name = payload.get(at + 6..at + 6 + name_len);
        let value = payload.get(at + 6 + name_len..at + 6 + name_len + value_len);
        at += 6 + name_len + value_len;
        let (Some(name), Some(value)) = (name, value) else {
            break;
        };
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) {
            out.append(k, v);
        }
    }
    out
}

/// A header's values in a packed block, without unpacking it.
fn packed_values<'a>(payload: &'a [u8], name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut at = 0;
    std::iter::from_fn(move || loop {
        let head = payload.get(at..at + 6)?;
        let name_len = u16::from_le_bytes([head[0], head[1]]) as usize;
        let value_len = u32::from_le_bytes([head[2], head[3], head[4], head[5]]) as usize;
        let key = payload.get(at + 6..at + 6 + name_len)?;
        let value = payload.get(at + 6 + name_len..at + 6 + name_len + value_len)?;
        at += 6 + name_len + value_len;
        if key == name.as_bytes() {
            return Some(value);
        }
    })
}

fn peer(payload: &[u8]) -> Option<SocketAddr> {
    let port = |at: usize| {
        Some(u16::from_le_bytes(
            payload.get(at..at + 2)?.try_into().ok()?,
        ))
    };
    match payload.len() {
        6 => {
            let ip: [u8; 4] = payload[..4].try_into().ok()?;
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port(4)?))
        }
        22 => {
            let ip: [u8; 16] = payload[..16].try_into().ok()?;
            let scope = u32::from_le_bytes(payload[16..20].try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port(20)?,
                0,
                scope,
            )))
        }
        _ => None,
    }
}

pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A record as readers filter it, before anything is copied: its bytes and facts, borrowed
/// from a running call (under its lock) or from an ended one.
pub struct LogRef<'a> {
    pub(super) arena: &'a [u8],
    pub(super) facts: &'a Facts,
}

impl LogRef<'_> {
    fn block(&self, kind: u8) -> Option<&[u8]> {
        blocks(self.arena)
            .find(|(k, _, _)| *k == kind)
            .map(|(_, _, r)| &self.arena[r])
    }

    /// The method: `package.Service/Method` once the router found it, else the request path
    /// without its leading `/`.
    pub fn method_name(&self) -> &str {
        match &self.facts.answerer {
            Some(a) => &a.method.name,
            None => std::str::from_utf8(self.block(block::PATH).unwrap_or_default())
                .unwrap_or_default()
                .trim_start_matches('/'),
        }
    }

    /// The final status (code, message), or `None` while the call runs.
    pub fn status(&self) -> Option<(i32, String)> {
        let (end, _) = self.facts.end?;
        let trailers = || unpack_headers(self.block(block::TRAILERS).unwrap_or_default());
        Some(match end {
            End::Trailers | End::TrailersOnly => match tonic::Status::from_header_map(&trailers())
            {
                Some(s) => (s.code() as i32, s.message().to_owned()),
                None => no_status(),
            },
            End::NoStatus => no_status(),
            End::Abandoned => (
                tonic::Code::Cancelled as i32,
                "the call ended before its status was sent: the client cancelled it or the connection closed".into(),
            ),
        })
    }

    pub fn is_done(&self) -> bool {
        self.facts.end.is_some()
    }

    /// True when the request carried metadata `name` with exactly `value`.
    pub fn has_metadata(&self, name: &str, value: &[u8]) -> bool {
        self.block(block::REQUEST_HEADERS)
            .is_some_and(|h| packed_values(h, name).any(|v| v == value))
    }
}

fn no_status() -> (i32, String) {
    (
        tonic::Code::Unknown as i32,
        "the response ended without a grpc-status".into(),
    )
}

/// A copy of a record, parsed, for reading.
pub struct CallView {
    pub method: Option<Arc<MethodInfo>>,
    pub method_name: String,
    /// The client's address.
    pub peer: Option<SocketAddr>,
    pub handler: Option<HandlerNote>,
    pub rules: Vec<u32>,
    pub dropped: u64,
    pub end: Option<(End, Duration)>,
    pub status: Option<(i32, String)>,
    /// The request headers as they arrived.
    pub metadata: HeaderMap,
    pub frames: Vec<Frame>,
    /// The response headers (only those besides the protocol's own are kept), or `None` if
    /// none went out: the call ended before it answered, or answered Trailers-Only.
    pub response_headers: Option<HeaderMap>,
    pub trailers: Option<HeaderMap>,
}

impl CallView {
    /// Parses `log`, whose bytes are `arena` (shared, so frames slice it without copying).
    pub(super) fn of(log: &LogRef<'_>, arena: Bytes) -> Self {
        let facts = log.facts;
        let end = facts.end();
        let mut view = CallView {
            method: facts.answerer.as_ref().map(|a| a.method.clone()),
            peer: None,
            method_name: log.method_name().to_owned(),
            handler: facts.answerer.as_ref().and_then(|a| a.handler.clone()),
            rules: Vec::new(),
            dropped: u64::from(facts.dropped),
            end,
            status: log.status(),
            metadata: HeaderMap::new(),
            frames: Vec::new(),
            response_headers: facts.answered.then(HeaderMap::new),
            trailers: None,
        };
        for (kind, at, range) in blocks(&arena) {
            let payload = &arena[range.clone()];
            match kind {
                block::REQUEST_HEADERS => view.metadata = unpack_headers(payload),
                block::RESPONSE_HEADERS => view.response_headers = Some(unpack_headers(payload)),
                block::TRAILERS => view.trailers = Some(unpack_headers(payload)),
                block::PEER => view.peer = peer(payload),
                block::RULE => {
                    if let Ok(rule) = <[u8; 4]>::try_from(payload) {
                        view.rules.push(u32::from_le_bytes(rule));
                    }
                }
                block::REQUEST | block::RESPONSE => view.frames.push(Frame {
                    direction: if kind == block::REQUEST {
                        Direction::Request
                    } else {
                        Direction::Response
                    },
                    at: at.unwrap_or_else(|| end.map_or(Duration::ZERO, |(_, d)| d)),
                    bytes: arena.slice(range),
                }),
                _ => {}
            }
        }
        view
    }
}
