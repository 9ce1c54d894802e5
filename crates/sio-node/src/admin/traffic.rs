//! Packets and bytes in and out of the node, counted where they cross the wire.
//!
//! socketioxide offers no hook on Engine.IO packets, so they are counted on the way through:
//! long-polling bodies by [`meter_polling`] (an axum middleware: packets are the records of a
//! payload, separated by `\x1e`), WebSocket frames by a [`WireMeter`] inside each accepted
//! connection once its upgrade succeeded (the frame headers give each message's length; the
//! payload is skipped, not read). A handful of relaxed atomic additions per read or write:
//! nothing per socket. As in `@socket.io/admin-ui`, Engine.IO pings, pongs and noops (one
//! byte) are left out, so an idle cluster shows no traffic.
//!
//! In development mode the same meters also copy the text messages (up to
//! [`CAPTURE_LIMIT`] bytes each) into a bounded queue, where the admin task reads the
//! Socket.IO events out of them (`event_received` / `event_sent`); a full queue drops and
//! counts.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use futures::Stream;
use tokio::sync::mpsc;

use crate::conn::ConnInfo;

/// Largest message copied for the development-mode event log, bytes.
pub const CAPTURE_LIMIT: usize = 16 * 1024;
/// Captured messages waiting for the admin task before new ones are dropped.
pub const CAPTURE_QUEUE: usize = 4096;

/// Which way a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From a client to the node.
    In,
    /// From the node to a client.
    Out,
}

/// A text message copied for the development-mode event log.
#[derive(Debug)]
pub struct Captured {
    /// Which way it went.
    pub direction: Direction,
    /// Engine.IO session id (the socket id in every namespace).
    pub sid: Arc<str>,
    /// The Engine.IO packet (`4…` for a Socket.IO packet).
    pub packet: Bytes,
}

/// The node's traffic counters (monotonic; the stats task reports differences).
#[derive(Debug, Default)]
pub struct Traffic {
    packets_in: AtomicU64,
    packets_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    capture: OnceLock<mpsc::Sender<Captured>>,
    /// Messages the development-mode queue had no room for.
    pub capture_dropped: AtomicU64,
}

/// A reading of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficTotals {
    /// Packets received.
    pub packets_in: u64,
    /// Packets sent.
    pub packets_out: u64,
    /// Payload bytes received.
    pub bytes_in: u64,
    /// Payload bytes sent.
    pub bytes_out: u64,
}

impl TrafficTotals {
    /// What changed since `earlier`.
    pub fn since(&self, earlier: &TrafficTotals) -> TrafficTotals {
        TrafficTotals {
            packets_in: self.packets_in.saturating_sub(earlier.packets_in),
            packets_out: self.packets_out.saturating_sub(earlier.packets_out),
            bytes_in: self.bytes_in.saturating_sub(earlier.bytes_in),
            bytes_out: self.bytes_out.saturating_sub(earlier.bytes_out),
        }
    }
}

impl Traffic {
    /// Counts one packet of `len` payload bytes.
    fn count(&self, direction: Direction, len: u64) {
        let (packets, bytes) = match direction {
            Direction::In => (&self.packets_in, &self.bytes_in),
            Direction::Out => (&self.packets_out, &self.bytes_out),
        };
        packets.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(len, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn totals(&self) -> TrafficTotals {
        TrafficTotals {
            packets_in: self.packets_in.load(Ordering::Relaxed),
            packets_out: self.packets_out.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
        }
    }

    /// Starts copying messages (development mode); returns the receiving end.
    pub fn start_capture(&self) -> Option<mpsc::Receiver<Captured>> {
        let (tx, rx) = mpsc::channel(CAPTURE_QUEUE);
        self.capture.set(tx).ok().map(|()| rx)
    }

    fn capturing(&self) -> bool {
        self.capture.get().is_some()
    }

    fn captured(&self, direction: Direction, sid: &Arc<str>, packet: Bytes) {
        if let Some(tx) = self.capture.get()
            && tx
                .try_send(Captured {
                    direction,
                    sid: sid.clone(),
                    packet,
                })
                .is_err()
        {
            self.capture_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// True for an Engine.IO packet that carries no data (ping `2`, pong `3`, noop `6`).
fn is_control(len: usize) -> bool {
    len <= 1
}

// ---------------------------------------------------------------------------------------------
// WebSocket frames

#[derive(Debug)]
enum FrameState {
    /// Before the frames: the HTTP response head (`101 Switching Protocols`) on the way out.
    HttpHead { matched: u8 },
    /// Reading a frame header (2 to 14 bytes).
    Header { buf: [u8; 14], have: usize },
    /// Inside a frame's payload.
    Payload {
        remaining: u64,
        mask: Option<[u8; 4]>,
        offset: usize,
        capture: Option<Vec<u8>>,
    },
}

/// Follows the WebSocket frames of one direction of a connection.
#[derive(Debug)]
struct FrameParser {
    direction: Direction,
    state: FrameState,
}

fn header_len(first_two: [u8; 2]) -> usize {
    let ext = match first_two[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if first_two[1] & 0x80 != 0 { 4 } else { 0 };
    2 + ext + mask
}

impl FrameParser {
    fn new(direction: Direction) -> Self {
        let state = match direction {
            Direction::Out => FrameState::HttpHead { matched: 0 },
            Direction::In => FrameState::Header {
                buf: [0; 14],
                have: 0,
            },
        };
        Self { direction, state }
    }

    /// Follows `data`; each complete text message copied (development mode) goes to `sink`.
    fn feed(&mut self, mut data: &[u8], traffic: &Traffic, sink: &mut dyn FnMut(Bytes)) {
        while !data.is_empty() {
            match &mut self.state {
                FrameState::HttpHead { matched } => {
                    const END: &[u8; 4] = b"\r\n\r\n";
                    let mut used = 0;
                    for &b in data {
                        used += 1;
                        *matched = if b == END[*matched as usize] {
                            *matched + 1
                        } else if b == b'\r' {
                            1
                        } else {
                            0
                        };
                        if *matched == 4 {
                            break;
                        }
                    }
                    let done = *matched == 4;
                    data = &data[used..];
                    if done {
                        self.state = FrameState::Header {
                            buf: [0; 14],
                            have: 0,
                        };
                    }
                }
                FrameState::Header { buf, have } => {
                    let need = if *have < 2 {
                        2
                    } else {
                        header_len([buf[0], buf[1]])
                    };
                    let take = (need - *have).min(data.len());
                    buf[*have..*have + take].copy_from_slice(&data[..take]);
                    *have += take;
                    data = &data[take..];
                    if *have < 2 || *have < header_len([buf[0], buf[1]]) {
                        continue;
                    }
                    let (b0, b1) = (buf[0], buf[1]);
                    let (len, at) = match b1 & 0x7f {
                        126 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
                        127 => {
                            let mut l = [0u8; 8];
                            l.copy_from_slice(&buf[2..10]);
                            (u64::from_be_bytes(l), 10)
                        }
                        n => (u64::from(n), 2),
                    };
                    let mask = (b1 & 0x80 != 0).then(|| {
                        let mut m = [0u8; 4];
                        m.copy_from_slice(&buf[at..at + 4]);
                        m
                    });
                    let opcode = b0 & 0x0f;
                    let fin = b0 & 0x80 != 0;
                    let data_frame = opcode <= 2;
                    if data_frame {
                        if fin && !(opcode == 1 && is_control(len as usize)) {
                            traffic.count(self.direction, len);
                        } else if !fin {
                            // a fragment: its bytes count, the message is counted at its end
                            let bytes = match self.direction {
                                Direction::In => &traffic.bytes_in,
                                Direction::Out => &traffic.bytes_out,
                            };
                            bytes.fetch_add(len, Ordering::Relaxed);
                        }
                    }
                    let capture = (opcode == 1 && fin && len > 1 && traffic.capturing())
                        .then(|| Vec::with_capacity((len as usize).min(CAPTURE_LIMIT)));
                    self.state = FrameState::Payload {
                        remaining: len,
                        mask,
                        offset: 0,
                        capture,
                    };
                    if len == 0 {
                        self.state = FrameState::Header {
                            buf: [0; 14],
                            have: 0,
                        };
                    }
                }
                FrameState::Payload {
                    remaining,
                    mask,
                    offset,
                    capture,
                } => {
                    let take = (*remaining).min(data.len() as u64) as usize;
                    if let Some(buf) = capture {
                        let room = CAPTURE_LIMIT.saturating_sub(buf.len()).min(take);
                        for (i, &b) in data[..room].iter().enumerate() {
                            let m = mask.map_or(0, |m| m[(*offset + i) % 4]);
                            buf.push(b ^ m);
                        }
                    }
                    *offset += take;
                    *remaining -= take as u64;
                    data = &data[take..];
                    if *remaining == 0 {
                        if let Some(buf) = capture.take() {
                            sink(Bytes::from(buf));
                        }
                        self.state = FrameState::Header {
                            buf: [0; 14],
                            have: 0,
                        };
                    }
                }
            }
        }
    }
}

/// Counts the WebSocket traffic of one accepted connection once it has been upgraded.
#[derive(Debug)]
pub struct WireMeter {
    traffic: Arc<Traffic>,
    read: FrameParser,
    write: FrameParser,
    /// The session id of a WebSocket-only client, read from its open packet.
    learned: Option<Arc<str>>,
}

/// The `sid` of an Engine.IO open packet (`0{"sid":"…",…}`).
fn open_packet_sid(packet: &[u8]) -> Option<Arc<str>> {
    #[derive(serde::Deserialize)]
    struct Open<'a> {
        sid: &'a str,
    }
    let body = packet.strip_prefix(b"0")?;
    serde_json::from_slice::<Open<'_>>(body)
        .ok()
        .map(|o| Arc::from(o.sid))
}

impl WireMeter {
    /// A meter adding to `traffic`.
    pub fn new(traffic: Arc<Traffic>) -> Self {
        Self {
            traffic,
            read: FrameParser::new(Direction::In),
            write: FrameParser::new(Direction::Out),
            learned: None,
        }
    }

    /// Bytes read from the client after the upgrade; `sid` is the session the upgrade named.
    pub fn on_read(&mut self, data: &[u8], sid: Option<&Arc<str>>) {
        if !self.traffic.capturing() {
            return self.read.feed(data, &self.traffic, &mut |_| {});
        }
        let sid = sid.or(self.learned.as_ref()).cloned();
        let traffic = self.traffic.clone();
        self.read.feed(data, &self.traffic, &mut |packet| {
            if let Some(sid) = &sid {
                traffic.captured(Direction::In, sid, packet);
            }
        });
    }

    /// Bytes written to the client from the upgrade's response on.
    pub fn on_write(&mut self, data: &[u8], sid: Option<&Arc<str>>) {
        if !self.traffic.capturing() {
            return self.write.feed(data, &self.traffic, &mut |_| {});
        }
        let known = sid.or(self.learned.as_ref()).cloned();
        let traffic = self.traffic.clone();
        let mut learned = None;
        self.write
            .feed(data, &self.traffic, &mut |packet| match &known {
                Some(sid) => traffic.captured(Direction::Out, sid, packet),
                None => learned = open_packet_sid(&packet),
            });
        if learned.is_some() {
            self.learned = learned;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Long-polling payloads

/// Counts the records of an Engine.IO long-polling payload as it streams by.
struct PayloadCounter {
    traffic: Arc<Traffic>,
    direction: Direction,
    sid: Option<Arc<str>>,
    record: usize,
    capture: Option<Vec<u8>>,
}

impl PayloadCounter {
    fn feed(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            let (part, rest, end) = match chunk.iter().position(|&b| b == 0x1e) {
                Some(i) => (&chunk[..i], &chunk[i + 1..], true),
                None => (chunk, &[][..], false),
            };
            self.record += part.len();
            if let Some(buf) = &mut self.capture {
                let room = CAPTURE_LIMIT.saturating_sub(buf.len()).min(part.len());
                buf.extend_from_slice(&part[..room]);
            }
            if end {
                self.finish_record();
            }
            chunk = rest;
        }
    }

    fn finish_record(&mut self) {
        let len = std::mem::take(&mut self.record);
        if !is_control(len) {
            self.traffic.count(self.direction, len as u64);
            if let (Some(buf), Some(sid)) = (&mut self.capture, &self.sid) {
                let packet = Bytes::from(std::mem::take(buf));
                self.traffic.captured(self.direction, sid, packet);
            }
        }
        if let Some(buf) = &mut self.capture {
            buf.clear();
        }
    }
}

/// A polling body whose records are counted as it is read.
struct Metered<S> {
    inner: S,
    counter: Option<PayloadCounter>,
}

impl<S> Stream for Metered<S>
where
    S: Stream<Item = Result<Bytes, axum::Error>> + Unpin,
{
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        match &polled {
            Poll::Ready(Some(Ok(chunk))) => {
                if let Some(c) = &mut self.counter {
                    c.feed(chunk);
                }
            }
            Poll::Ready(None) => {
                if let Some(mut c) = self.counter.take()
                    && c.record > 0
                {
                    c.finish_record();
                }
            }
            _ => {}
        }
        polled
    }
}

fn metered(body: Body, counter: PayloadCounter) -> Body {
    Body::from_stream(Metered {
        inner: body.into_data_stream(),
        counter: Some(counter),
    })
}

/// Engine.IO path served by socketioxide.
const ENGINE_PATH: &str = "/socket.io";

/// Axum middleware: counts long-polling payloads both ways, and hands WebSocket connections
/// to their connection's [`WireMeter`] once the upgrade is answered `101`.
pub async fn meter_polling(
    axum::extract::State(traffic): axum::extract::State<Arc<Traffic>>,
    req: Request,
    next: Next,
) -> Response {
    if !req.uri().path().starts_with(ENGINE_PATH) {
        return next.run(req).await;
    }
    let query = req.uri().query().unwrap_or("");
    let sid: Option<Arc<str>> = crate::drain::query_param(query, "sid").map(Arc::from);
    let websocket = crate::drain::query_param(query, "transport") == Some("websocket");
    let conn = req.extensions().get::<ConnectInfo<ConnInfo>>().cloned();
    if websocket {
        let res = next.run(req).await;
        if res.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(ConnectInfo(info)) = conn
        {
            info.handle.meter_websocket(sid);
        }
        return res;
    }
    let capture = traffic.capturing();
    let counter = |direction| PayloadCounter {
        traffic: traffic.clone(),
        direction,
        sid: sid.clone(),
        record: 0,
        capture: (capture && sid.is_some()).then(Vec::new),
    };
    let (parts, body) = req.into_parts();
    let req = Request::from_parts(parts, metered(body, counter(Direction::In)));
    let res = next.run(req).await;
    if !res.status().is_success() {
        return res;
    }
    let (parts, body) = res.into_parts();
    let mut out = counter(Direction::Out);
    if out.sid.is_none() {
        // the handshake answer (`0{"sid":…}`): an open packet, not traffic of a socket
        out.capture = None;
    }
    Response::from_parts(parts, metered(body, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(m | n as u8),
            n if n < 65536 => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if let Some(k) = mask {
            f.extend_from_slice(&k);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        } else {
            f.extend_from_slice(payload);
        }
        f
    }

    #[test]
    fn frames_are_counted_byte_by_byte_and_pings_left_out() {
        let traffic = Arc::new(Traffic::default());
        let mut rx = traffic.start_capture().unwrap();
        let sid: Arc<str> = Arc::from("AAAAAAAAAAAAAAAA");
        let mut meter = WireMeter::new(traffic.clone());
        let big = vec![b'x'; 70_000];
        let mut stream = Vec::new();
        stream.extend(frame(1, b"2", Some([1, 2, 3, 4]))); // ping: not counted
        stream.extend(frame(1, br#"42["hello",1]"#, Some([9, 8, 7, 6])));
        stream.extend(frame(2, &big, Some([5, 5, 5, 5])));
        stream.extend(frame(1, &vec![b'y'; 300], Some([0, 1, 0, 1])));
        for b in &stream {
            meter.on_read(std::slice::from_ref(b), Some(&sid));
        }
        let t = traffic.totals();
        assert_eq!(t.packets_in, 3);
        assert_eq!(t.bytes_in, 13 + 70_000 + 300);
        let first = rx.try_recv().unwrap();
        assert_eq!(&first.packet[..], br#"42["hello",1]"#);
        assert_eq!(first.direction, Direction::In);
        assert_eq!(rx.try_recv().unwrap().packet.len(), 300);

        let mut out = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n".to_vec();
        out.extend(frame(1, b"3", None));
        out.extend(frame(1, br#"42["news"]"#, None));
        meter.on_write(&out, Some(&sid));
        let t = traffic.totals();
        assert_eq!((t.packets_out, t.bytes_out), (1, 10));
        assert_eq!(&rx.try_recv().unwrap().packet[..], br#"42["news"]"#);
    }

    #[test]
    fn polling_records_are_counted_across_chunks() {
        let traffic = Arc::new(Traffic::default());
        let mut c = PayloadCounter {
            traffic: traffic.clone(),
            direction: Direction::Out,
            sid: None,
            record: 0,
            capture: None,
        };
        c.feed(b"42[\"a\"]\x1e2\x1e4");
        c.feed(b"2[\"bb\"]");
        c.finish_record();
        let t = traffic.totals();
        assert_eq!((t.packets_out, t.bytes_out), (2, 7 + 8));
    }
}
