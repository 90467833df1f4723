//! Budgets for HTTP/2 frames that cost the server work but carry no call.
//!
//! A PING or SETTINGS frame asks for an acknowledgement, a SETTINGS frame that changes
//! INITIAL_WINDOW_SIZE changes the window of every open stream, and PRIORITY frames and empty
//! DATA frames are bookkeeping only; a client may send them back to back, a million a second on
//! one connection (the PING, SETTINGS and empty-frame floods of CVE-2019-9512/9515/9518). h2
//! answers each, holds only one unsent acknowledgement and stops reading while its answers are
//! not taken, so memory stays bounded; but it handles every frame it has read before the
//! connection's task yields, and tokio lets a task read 128 times before that. A flood so held
//! a network thread, and calls of other connections on that thread waited: with 200 calls open
//! and SETTINGS changing their windows, a quick call on another connection waited 500 to 750 ms
//! (debug build, one network thread), up to 100 ms in a release build with two.
//!
//! So the connection's socket is read through [`FrameBudget`], which follows the 9-byte frame
//! headers as the bytes pass (no copying, payloads are skipped) and:
//!
//! - counts PING and SETTINGS frames that are not acknowledgements, PRIORITY frames, empty
//!   DATA frames that do not end their stream, and frames of types HTTP/2 does not define
//!   (which h2 skips unread): over [`MAX_IDLE_FRAMES`] in a second (or over
//!   [`MAX_SETTINGS`] SETTINGS frames) closes the connection, with GOAWAY `ENHANCE_YOUR_CALM`
//!   when the server is between frames of its own (as grpc-go and nghttp2 close pingers). A
//!   frame that arrives after the server wrote [`BYTES_PER_FREE_FRAME`] to the client is not
//!   counted, so a client measuring bandwidth with pings while it downloads (grpc-go's and
//!   hyper's adaptive windows) is not cut off;
//! - counts WINDOW_UPDATE and RST_STREAM frames among those idle frames, unless the client has
//!   a reason to send them (see below);
//! - makes the connection's task yield after reading for [`READ_SLICE`] without a pause, so a
//!   flood of frames not counted (HEADERS of calls, DATA with content…) holds a network thread
//!   for little more than that (what one read brought is handled whole). Alone, this cut the
//!   wait above from 750 to 190 ms; the budget ends such a flood within its first thousand
//!   frames.
//!
//! WINDOW_UPDATE: h2 closes the connection for an increment of 0 (PROTOCOL_ERROR) and for one
//! that takes the connection's window past 2^31-1 (FLOW_CONTROL_ERROR; a stream's, with
//! RST_STREAM), but takes any number of valid increments, and ignores those for streams already
//! closed: a client sending millions of them (an increment of 1 each, or on a closed stream) was
//! never stopped and cost the server a lock and some bookkeeping each, for as long as it went
//! on. A WINDOW_UPDATE is only of use when the server sends data: it answers DATA the client
//! read. So each DATA frame with content the server writes pays for two (the stream's and the
//! connection's, for a client that acknowledges every frame; common clients acknowledge once
//! half a window is read, far fewer), and so does each stream the client opens for one (a
//! client may grow a new stream's window past the initial size), saved up to
//! [`MAX_SAVED_UPDATES`]; others count as idle frames (bytes written pay for them too, as for
//! pings). A client that grows its windows (adaptive windows, a connection window raised once
//! at the start) sends a few a second.
//!
//! Acknowledgements: a PING or SETTINGS acknowledgement answers one the server sent, and is
//! free then. One the server did not ask for (h2 logged a warning for each unsolicited PING
//! acknowledgement, a million lines a second from one client, and a log read slowly through a
//! pipe held the network threads) counts as an idle frame.
//!
//! RST_STREAM: a client cancelling its call resets the stream it opened; h2 closes a
//! connection that resets more than `MAX_PENDING_ACCEPT_RESETS` (`server.rs`) streams before
//! the server took them (the "rapid reset" of CVE-2023-44487), and a call reset later has its
//! handler dropped (scripts are told at once, see `script::CancelOnDrop`). But a reset of a
//! stream already closed is ignored by h2 and cost the same as a WINDOW_UPDATE, without end.
//! So each stream the client opens pays for one reset, saved up to [`MAX_SAVED_RESETS`]; other
//! resets count as idle frames.

use std::fmt;
use std::time::{Duration, Instant};

/// Idle frames (see the module docs) a connection may send within one second. Legitimate
/// clients send a few: a keepalive ping every 10 s (grpc-go, grpc-java) or every 100 ms at the
/// most eager, one SETTINGS frame, a handful of PRIORITY frames from a browser.
pub const MAX_IDLE_FRAMES: u32 = 1000;

/// SETTINGS frames (not acknowledgements) a connection may send within one second, among its
/// idle frames: one costs the server work for every stream open. A client sends one when it
/// connects, and a few more as it grows its windows (grpc-go).
pub const MAX_SETTINGS: u32 = 100;

/// Bytes written to the client that pay for one idle frame.
pub const BYTES_PER_FREE_FRAME: u64 = 16 * 1024;

/// Bytes written that may be saved up to pay for later idle frames.
const MAX_SAVED: u64 = 1024 * 1024;

/// WINDOW_UPDATE frames that DATA frames written and streams opened earlier may pay for (two
/// and one each).
pub const MAX_SAVED_UPDATES: u32 = 4096;

/// RST_STREAM frames that streams the client opened earlier may pay for (one each).
pub const MAX_SAVED_RESETS: u32 = 1024;

/// How long a connection's task may go on reading and handling frames before it yields to the
/// other tasks of its network thread (and to the network itself).
pub const READ_SLICE: Duration = Duration::from_millis(2);

/// Whether WINDOW_UPDATE and RST_STREAM frames are counted (see the module docs).
const COUNT_UPDATES_AND_RESETS: bool = true;

/// The HTTP/2 client preface, which precedes the client's first frame.
const PREFACE_LEN: usize = 24;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const WINDOW_UPDATE: u8 = 0x8;
/// The last frame type HTTP/2 defines (CONTINUATION); h2 skips frames of higher types.
const LAST_KNOWN: u8 = 0x9;
const ACK: u8 = 0x1;
const END_STREAM: u8 = 0x1;

/// One frame header: payload length, type, flags and stream id.
#[derive(Debug, Clone, Copy)]
struct Header {
    len: u32,
    kind: u8,
    flags: u8,
    stream: u32,
}

/// Follows frame boundaries in a byte stream: the bytes of a header are collected (at most 9),
/// payloads are skipped.
#[derive(Debug)]
struct Scanner {
    /// Bytes still to skip (the preface, or the payload of the last frame).
    skip: usize,
    head: [u8; 9],
    have: usize,
}

impl Scanner {
    fn new(skip: usize) -> Self {
        Self {
            skip,
            head: [0; 9],
            have: 0,
        }
    }

    /// Passes `bytes`, calling `on_header` for every frame header completed; stops at its
    /// first error.
    fn feed<E>(
        &mut self,
        mut bytes: &[u8],
        mut on_header: impl FnMut(Header) -> Result<(), E>,
    ) -> Result<(), E> {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == 9 {
                self.have = 0;
                let h = &self.head;
                let header = Header {
                    len: u32::from_be_bytes([0, h[0], h[1], h[2]]),
                    kind: h[3],
                    flags: h[4],
                    stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
                };
                self.skip = header.len as usize;
                on_header(header)?;
            }
        }
        Ok(())
    }

    /// Whether the bytes passed so far end with a whole frame.
    fn at_boundary(&self) -> bool {
        self.skip == 0 && self.have == 0
    }
}

/// A connection that sent too many idle frames within a second.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Flood {
    pub pings: u32,
    pub settings: u32,
    pub priorities: u32,
    pub empty_data: u32,
    pub window_updates: u32,
    pub resets: u32,
    /// PING and SETTINGS acknowledgements of frames the server did not send.
    pub unasked_acks: u32,
    /// Frames of types HTTP/2 does not define.
    pub unknown: u32,
}

impl fmt::Display for Flood {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "within a second it sent {} PING, {} SETTINGS, {} PRIORITY, {} empty DATA, {} \
             WINDOW_UPDATE (beyond two per DATA frame it was sent), {} RST_STREAM (beyond one \
             per stream it opened), {} unasked PING or SETTINGS acknowledgement and {} \
             unknown-type frames, which carry no call: over the limit of \
             {MAX_IDLE_FRAMES} such frames a second ({MAX_SETTINGS} SETTINGS), which only a flood \
             reaches (a keepalive ping every 100 ms is 10 a second)",
            self.pings,
            self.settings,
            self.priorities,
            self.empty_data,
            self.window_updates,
            self.resets,
            self.unasked_acks,
            self.unknown
        )
    }
}

impl std::error::Error for Flood {}

/// The frame budget of one connection: fed the bytes read from and written to the client.
#[derive(Debug)]
pub struct FrameBudget {
    incoming: Scanner,
    outgoing: Scanner,
    counter: Counter,
    /// The highest stream the client opened, for GOAWAY.
    last_stream: u32,
    /// When the task began reading without waiting or yielding.
    slice: Option<Instant>,
    flooded: Option<Flood>,
}

/// The idle frames of the current one-second window.
#[derive(Debug, Default)]
struct Counter {
    /// When the window began (its first counted frame).
    window: Option<Instant>,
    counted: Flood,
    /// Bytes written to the client not yet spent on idle frames (at most [`MAX_SAVED`]).
    saved: u64,
    /// WINDOW_UPDATE frames paid for by DATA frames written and streams opened (at most
    /// [`MAX_SAVED_UPDATES`]).
    updates: u32,
    /// RST_STREAM frames paid for by streams the client opened (at most [`MAX_SAVED_RESETS`]).
    resets: u32,
    /// PING and SETTINGS acknowledgements paid for by the PING and SETTINGS frames the server
    /// sent (at most [`MAX_SAVED_ACKS`] each).
    ping_acks: u32,
    settings_acks: u32,
}

/// Acknowledgements the server's own PING or SETTINGS frames pay for, at most: it sends one
/// SETTINGS frame, and a keepalive or shutdown PING now and then.
const MAX_SAVED_ACKS: u32 = 16;

/// A counted acknowledgement: its kind for [`Counter::count`].
const UNASKED_ACK: u8 = 0xfe;
/// A counted frame of an unknown type.
const UNKNOWN: u8 = 0xff;

impl Counter {
    /// Counts one idle frame of type `kind` arriving at `now`.
    fn count(&mut self, kind: u8, now: Instant) -> Result<(), Flood> {
        let paid = match kind {
            WINDOW_UPDATE => Some(&mut self.updates),
            RST_STREAM => Some(&mut self.resets),
            _ => None,
        };
        if let Some(paid) = paid.filter(|n| **n > 0) {
            *paid -= 1;
            return Ok(());
        }
        if self.saved >= BYTES_PER_FREE_FRAME {
            self.saved -= BYTES_PER_FREE_FRAME;
            return Ok(());
        }
        let began = *self.window.get_or_insert(now);
        if self.counted.total() >= MAX_IDLE_FRAMES
            || (kind == SETTINGS && self.counted.settings >= MAX_SETTINGS)
        {
            // Over the limit: a flood if the window began less than a second ago, else a new
            // window begins.
            if now.duration_since(began) < Duration::from_secs(1) {
                self.counted.add(kind);
                return Err(self.counted);
            }
            self.window = Some(now);
            self.counted = Flood::default();
        }
        self.counted.add(kind);
        Ok(())
    }
}

impl Flood {
    fn add(&mut self, kind: u8) {
        match kind {
            PING => self.pings += 1,
            SETTINGS => self.settings += 1,
            PRIORITY => self.priorities += 1,
            WINDOW_UPDATE => self.window_updates += 1,
            RST_STREAM => self.resets += 1,
            UNASKED_ACK => self.unasked_acks += 1,
            UNKNOWN => self.unknown += 1,
            _ => self.empty_data += 1,
        }
    }

    fn total(&self) -> u32 {
        self.pings
            + self.settings
            + self.priorities
            + self.empty_data
            + self.window_updates
            + self.resets
            + self.unasked_acks
            + self.unknown
    }
}

impl Default for FrameBudget {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameBudget {
    pub fn new() -> Self {
        Self {
            incoming: Scanner::new(PREFACE_LEN),
            outgoing: Scanner::new(0),
            counter: Counter::default(),
            last_stream: 0,
            slice: None,
            flooded: None,
        }
    }

    /// Counts the frames in `bytes` read from the client; the flood, once the budget is spent
    /// (and at every call after).
    pub fn received(&mut self, bytes: &[u8]) -> Result<(), Flood> {
        if let Some(flood) = self.flooded {
            return Err(flood);
        }
        let now = Instant::now();
        self.slice.get_or_insert(now);
        let (counter, last_stream) = (&mut self.counter, &mut self.last_stream);
        let scanned = self.incoming.feed(bytes, |h| {
            let acks = match h.kind {
                PING => Some(&mut counter.ping_acks),
                SETTINGS => Some(&mut counter.settings_acks),
                _ => None,
            };
            if let Some(acks) = acks.filter(|_| h.flags & ACK != 0) {
                if *acks > 0 {
                    *acks -= 1;
                    return Ok(());
                }
                return counter.count(UNASKED_ACK, now);
            }
            let idle = match h.kind {
                PING | SETTINGS => true,
                PRIORITY => true,
                DATA => h.len == 0 && h.flags & END_STREAM == 0,
                HEADERS => {
                    if h.stream > *last_stream {
                        // A new stream: it may be reset once, and its window grown once.
                        counter.resets = (counter.resets + 1).min(MAX_SAVED_RESETS);
                        counter.updates = (counter.updates + 1).min(MAX_SAVED_UPDATES);
                        *last_stream = h.stream;
                    }
                    false
                }
                WINDOW_UPDATE | RST_STREAM => COUNT_UPDATES_AND_RESETS,
                kind if kind > LAST_KNOWN => {
                    counter.count(UNKNOWN, now)?;
                    false
                }
                _ => false,
            };
            if idle {
                counter.count(h.kind, now)?;
            }
            Ok(())
        });
        if let Err(flood) = scanned {
            self.flooded = Some(flood);
        }
        scanned
    }

    /// Follows the bytes written to the client.
    pub fn sent(&mut self, written: &[u8]) {
        let counter = &mut self.counter;
        counter.saved = (counter.saved + written.len() as u64).min(MAX_SAVED);
        let _ = self.outgoing.feed(written, |h| {
            match h.kind {
                DATA if h.len > 0 => {
                    counter.updates = (counter.updates + 2).min(MAX_SAVED_UPDATES);
                }
                PING if h.flags & ACK == 0 => {
                    counter.ping_acks = (counter.ping_acks + 1).min(MAX_SAVED_ACKS);
                }
                SETTINGS if h.flags & ACK == 0 => {
                    counter.settings_acks = (counter.settings_acks + 1).min(MAX_SAVED_ACKS);
                }
                _ => {}
            }
            Ok::<(), ()>(())
        });
    }

    /// Whether the connection's task has been reading for [`READ_SLICE`] without waiting, and
    /// should yield (which starts a new slice).
    pub fn should_yield(&mut self) -> bool {
        if self
            .slice
            .is_some_and(|began| began.elapsed() >= READ_SLICE)
        {
            self.slice = None;
            return true;
        }
        false
    }

    /// The task waits for the client: a new slice begins with the next read.
    pub fn waiting(&mut self) {
        self.slice = None;
    }

    /// GOAWAY `ENHANCE_YOUR_CALM` naming the last stream the client opened, if what the server
    /// wrote so far ends with a whole frame (otherwise a frame written now would corrupt the
    /// one cut short).
    pub fn goaway(&self) -> Option<[u8; 17]> {
        if !self.outgoing.at_boundary() {
            return None;
        }
        let mut frame = [0u8; 17];
        frame[2] = 8; // payload length
        frame[3] = 0x7; // GOAWAY
        frame[9..13].copy_from_slice(&self.last_stream.to_be_bytes());
        frame[13..17].copy_from_slice(&u32::from(h2::Reason::ENHANCE_YOUR_CALM).to_be_bytes());
        Some(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn preface() -> Vec<u8> {
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()
    }

    #[test]
    fn frames_split_anywhere_are_counted_once() {
        let mut bytes = preface();
        bytes.extend(frame(DATA, 0, 1, &[0; 300]));
        for _ in 0..MAX_IDLE_FRAMES {
            bytes.extend(frame(PING, 0, 0, &[1; 8]));
        }
        let mut budget = FrameBudget::new();
        for chunk in bytes.chunks(7) {
            budget.received(chunk).unwrap();
        }
        assert_eq!(budget.counter.counted.pings, MAX_IDLE_FRAMES);
        let flood = budget.received(&frame(SETTINGS, 0, 0, &[])).unwrap_err();
        assert_eq!((flood.pings, flood.settings), (MAX_IDLE_FRAMES, 1));
    }

    #[test]
    fn answered_acknowledgements_and_frames_with_content_are_free() {
        let mut budget = FrameBudget::new();
        budget.received(&preface()).unwrap();
        for _ in 0..2 * MAX_IDLE_FRAMES {
            budget.sent(&frame(PING, 0, 0, &[1; 8]));
            budget.sent(&frame(SETTINGS, 0, 0, &[]));
            let mut bytes = frame(PING, ACK, 0, &[1; 8]);
            bytes.extend(frame(SETTINGS, ACK, 0, &[]));
            bytes.extend(frame(DATA, END_STREAM, 1, &[]));
            bytes.extend(frame(DATA, 0, 1, &[0; 5]));
            budget.received(&bytes).unwrap();
        }
        assert_eq!(budget.counter.counted, Flood::default());
    }

    #[test]
    fn unasked_acknowledgements_and_unknown_frames_are_idle_frames() {
        for (kind, flags) in [(PING, ACK), (SETTINGS, ACK), (0x42, 0)] {
            let mut bytes = preface();
            for _ in 0..MAX_IDLE_FRAMES {
                bytes.extend(frame(kind, flags, 0, &[]));
            }
            let mut budget = FrameBudget::new();
            budget.received(&bytes).unwrap();
            let flood = budget.received(&frame(kind, flags, 0, &[])).unwrap_err();
            let counted = if kind == 0x42 {
                flood.unknown
            } else {
                flood.unasked_acks
            };
            assert_eq!(counted, MAX_IDLE_FRAMES + 1, "{flood}");
        }
    }

    #[test]
    fn data_written_pays_for_two_window_updates_each() {
        let mut budget = FrameBudget::new();
        budget.received(&preface()).unwrap();
        let update = frame(WINDOW_UPDATE, 0, 0, &[0, 0, 0, 1]);
        for _ in 0..3 * MAX_IDLE_FRAMES {
            // Small DATA frames (no byte credit to speak of), each acknowledged on the stream
            // and the connection.
            budget.sent(&frame(DATA, 0, 1, &[0; 5]));
            budget.received(&update).unwrap();
            budget.received(&update).unwrap();
        }
        assert_eq!(budget.counter.counted.total(), 0);
        // With no DATA sent (and the bytes written spent), the same frames are idle.
        budget.counter.saved = 0;
        for _ in 0..MAX_IDLE_FRAMES {
            budget.received(&update).unwrap();
        }
        let flood = budget.received(&update).unwrap_err();
        assert_eq!(flood.window_updates, MAX_IDLE_FRAMES + 1);
        // An empty DATA frame (the server's end of stream) pays for nothing.
        let mut budget = FrameBudget::new();
        budget.received(&preface()).unwrap();
        for _ in 0..100 {
            budget.sent(&frame(DATA, END_STREAM, 1, &[]));
        }
        budget.received(&update).unwrap();
        assert_eq!(budget.counter.counted.window_updates, 1);
    }

    #[test]
    fn each_stream_opened_pays_for_one_reset() {
        let mut budget = FrameBudget::new();
        budget.received(&preface()).unwrap();
        for stream in (1..4 * MAX_IDLE_FRAMES).step_by(2) {
            budget
                .received(&frame(HEADERS, 0x4, stream, &[0x83]))
                .unwrap();
            budget
                .received(&frame(RST_STREAM, 0, stream, &[0, 0, 0, 8]))
                .unwrap();
        }
        assert_eq!(budget.counter.counted.total(), 0);
        // Trailers open no stream; resets of streams already reset are idle.
        let last = budget.last_stream;
        for _ in 0..MAX_IDLE_FRAMES {
            budget
                .received(&frame(HEADERS, 0x5, last, &[0x83]))
                .unwrap();
            budget
                .received(&frame(RST_STREAM, 0, last, &[0, 0, 0, 8]))
                .unwrap();
        }
        let flood = budget
            .received(&frame(RST_STREAM, 0, last, &[0, 0, 0, 8]))
            .unwrap_err();
        assert_eq!(flood.resets, MAX_IDLE_FRAMES + 1);
    }

    #[test]
    fn each_stream_opened_pays_for_one_window_update() {
        let mut budget = FrameBudget::new();
        budget.received(&preface()).unwrap();
        for stream in (1..4 * MAX_IDLE_FRAMES).step_by(2) {
            budget
                .received(&frame(HEADERS, 0x4, stream, &[0x83]))
                .unwrap();
            budget
                .received(&frame(WINDOW_UPDATE, 0, stream, &[0, 1, 0, 0]))
                .unwrap();
        }
        assert_eq!(budget.counter.counted.total(), 0);
        budget
            .received(&frame(WINDOW_UPDATE, 0, 1, &[0, 1, 0, 0]))
            .unwrap();
        assert_eq!(budget.counter.counted.window_updates, 1);
    }

    #[test]
    fn settings_have_a_budget_of_their_own() {
        let mut budget = FrameBudget::new();
        let now = Instant::now();
        for _ in 0..MAX_SETTINGS {
            budget.counter.count(SETTINGS, now).unwrap();
        }
        budget.counter.count(PING, now).unwrap();
        let flood = budget.counter.count(SETTINGS, now).unwrap_err();
        assert_eq!(flood.settings, MAX_SETTINGS + 1);
    }

    #[test]
    fn a_new_second_starts_a_new_count() {
        let mut budget = FrameBudget::new();
        let start = Instant::now();
        for _ in 0..MAX_IDLE_FRAMES {
            budget.counter.count(PING, start).unwrap();
        }
        budget
            .counter
            .count(PING, start + Duration::from_secs(1))
            .unwrap();
        assert_eq!(budget.counter.counted.pings, 1);
    }

    #[test]
    fn bytes_written_pay_for_pings() {
        let mut budget = FrameBudget::new();
        budget.sent(&vec![
            0;
            4 * MAX_IDLE_FRAMES as usize
                * BYTES_PER_FREE_FRAME as usize
        ]);
        let now = Instant::now();
        for _ in 0..MAX_IDLE_FRAMES + MAX_SAVED as u32 / BYTES_PER_FREE_FRAME as u32 {
            budget.counter.count(PING, now).unwrap();
        }
        budget.counter.count(PING, now).unwrap_err();
    }

    #[test]
    fn goaway_waits_for_the_end_of_the_servers_frame() {
        let mut budget = FrameBudget::new();
        budget.received(&preface()).unwrap();
        budget.received(&frame(HEADERS, 0x4, 5, &[0x83])).unwrap();
        let data = frame(DATA, 0, 5, &[0; 10]);
        budget.sent(&data[..12]);
        assert_eq!(budget.goaway(), None);
        budget.sent(&data[12..]);
        let goaway = budget.goaway().unwrap();
        assert_eq!(goaway[3], 0x7);
        assert_eq!(&goaway[9..13], &5u32.to_be_bytes());
        assert_eq!(&goaway[13..], &11u32.to_be_bytes());
    }
}
