//! A WebSocket client written on raw TCP, for what a well-behaved library refuses to send:
//! malformed frames, bad handshakes, pings without reading.
#![allow(dead_code)]

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const OP_CONTINUE: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// A valid `Sec-WebSocket-Key` (the base64 of 16 bytes).
pub const GOOD_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The close code of a Close frame (1005 when it has none).
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == OP_CLOSE).then(|| match self.payload.as_slice() {
            [a, b, ..] => u16::from_be_bytes([*a, *b]),
            _ => 1005,
        })
    }
}

pub struct RawWs {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// The answer to a handshake that was not upgraded.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: String,
}

/// Sends a handshake on `path` with `key` as `Sec-WebSocket-Key`.
pub async fn connect(port: u16, path: &str, key: &str) -> Result<RawWs, Refused> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the sidecar closed during the handshake");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let rest = buf[end..].to_vec();
    if status == 101 {
        return Ok(RawWs { stream, buf: rest });
    }
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = rest;
    while body.len() < len {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Err(Refused {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// One frame as a client sends it: masked, unless `masked` is false (a protocol error).
pub fn frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = header(fin, rsv, opcode, payload.len() as u64, masked);
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    if masked {
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A frame header announcing `len` payload bytes (without mask key or payload).
pub fn header(fin: bool, rsv: u8, opcode: u8, len: u64, masked: bool) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | ((rsv & 7) << 4) | (opcode & 0x0f)];
    let m = if masked { 0x80 } else { 0 };
    if len < 126 {
        out.push(m | len as u8);
    } else if len <= u64::from(u16::MAX) {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    out
}

/// A masked Close frame with `code` (and no reason).
pub fn close(code: u16) -> Vec<u8> {
    frame(true, 0, OP_CLOSE, &code.to_be_bytes(), true)
}

impl RawWs {
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// The next frame from the sidecar, or `None` at the end of the connection.
    pub async fn read_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some((frame, used)) = parse(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            let mut chunk = vec![0u8; 64 << 10];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads until a Close frame (its code) or the end of the connection (`None`), keeping
    /// the frames before it.
    pub async fn read_until_close(&mut self) -> (Vec<Frame>, Option<u16>) {
        let mut before = vec![];
        while let Some(f) = self.read_frame().await {
            if let Some(code) = f.close_code() {
                return (before, Some(code));
            }
            before.push(f);
        }
        (before, None)
    }

    /// Whether the sidecar ends the connection after its Close (reads nothing more but EOF).
    pub async fn ends(&mut self) -> bool {
        self.read_frame().await.is_none()
    }
}

/// Parses one server frame (unmasked) from the front of `buf`.
fn parse(buf: &[u8]) -> Option<(Frame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0f;
    assert_eq!(buf[1] & 0x80, 0, "the sidecar sent a masked frame");
    let (len, mut at) = match buf[1] & 0x7f {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let payload = buf.get(at..at + len)?.to_vec();
    at += len;
    Some((
        Frame {
            fin,
            opcode,
            payload,
        },
        at,
    ))
}
