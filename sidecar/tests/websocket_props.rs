//! Property tests of the WebSocket handling against a real sidecar: arbitrary sequences of
//! frames (text and binary messages of arbitrary content, split into arbitrary fragments, pings
//! between them, and possibly one malformed frame), sent over raw TCP. Properties:
//! - every message before the first bad frame reaches the app whole and in order (the test app
//!   broadcasts `{seq}:{text}` back);
//! - pongs carry the payloads of pings sent, in order, and the last ping is answered;
//! - the connection ends with the Close code the bad frame calls for (1002, 1007, 1009), or with
//!   the echo of the client's 1000, and the sidecar then drops it;
//! - the sidecar stays up and serves after every case.
//!
//! Bounded: a fixed number of cases (`STEAD_WS_PROP_CASES`, default 96) over small inputs.

mod support;

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use support::raw_ws::{
    self, OP_BINARY, OP_CLOSE, OP_CONTINUE, OP_PING, OP_PONG, OP_TEXT, RawWs, frame, header,
};
use support::{Shard, with_proxy_app};

#[derive(Debug, Clone)]
enum Data {
    Text(String),
    Binary(Vec<u8>),
}

#[derive(Debug, Clone)]
enum Bad {
    InvalidUtf8(Vec<u8>),
    ReservedBits(u8),
    Unmasked,
    UnknownOpcode(u8),
    ContinuationFirst,
    LongPing,
    Oversize,
    CloseCode(u16),
}

impl Bad {
    /// The close code the sidecar must answer with.
    fn code(&self) -> u16 {
        match self {
            Bad::InvalidUtf8(_) => 1007,
            Bad::Oversize => 1009,
            _ => 1002,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        match self {
            Bad::InvalidUtf8(b) => frame(true, 0, OP_TEXT, b, true),
            Bad::ReservedBits(r) => frame(true, *r, OP_BINARY, b"r", true),
            Bad::Unmasked => frame(true, 0, OP_TEXT, b"u", false),
            Bad::UnknownOpcode(op) => frame(true, 0, *op, b"o", true),
            Bad::ContinuationFirst => frame(true, 0, OP_CONTINUE, b"c", true),
            Bad::LongPing => frame(true, 0, OP_PING, &[1; 126], true),
            Bad::Oversize => {
                let mut h = header(true, 0, OP_BINARY, (32 << 20) + 1, true);
                h.extend_from_slice(&[0; 4]);
                h
            }
            Bad::CloseCode(c) => raw_ws::close(*c),
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// A message, cut into fragments at these points (each taken modulo its length).
    Message(Data, Vec<usize>),
    Ping(Vec<u8>),
}

#[derive(Debug, Clone)]
struct Case {
    steps: Vec<Step>,
    bad: Option<Bad>,
}

fn data() -> impl Strategy<Value = Data> {
    prop_oneof![
        prop::collection::vec(any::<char>(), 0..40)
            .prop_map(|c| Data::Text(c.into_iter().collect())),
        prop::collection::vec(any::<u8>(), 0..300).prop_map(Data::Binary),
        // Larger than the sidecar's 4 KiB read buffer.
        (4000usize..20_000).prop_map(|n| Data::Text("é".repeat(n / 2))),
    ]
}

fn bad() -> impl Strategy<Value = Bad> {
    prop_oneof![
        // Invalid UTF-8: a lone continuation byte, an overlong form or a truncated sequence.
        prop::sample::select(vec![
            vec![0x80u8],
            vec![0xc0, 0xaf],
            vec![0xe2, 0x82],
            vec![0xff]
        ])
        .prop_map(|b| Bad::InvalidUtf8([b"ok".to_vec(), b].concat())),
        (1u8..8).prop_map(Bad::ReservedBits),
        Just(Bad::Unmasked),
        prop::sample::select(vec![3u8, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf])
            .prop_map(Bad::UnknownOpcode),
        Just(Bad::ContinuationFirst),
        Just(Bad::LongPing),
        Just(Bad::Oversize),
        prop::sample::select(vec![0u16, 999, 1004, 1005, 1006, 1015, 1100, 2999, 5000])
            .prop_map(Bad::CloseCode),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    let step = prop_oneof![
        3 => (data(), prop::collection::vec(any::<usize>(), 0..4)).prop_map(|(d, cuts)| Step::Message(d, cuts)),
        1 => prop::collection::vec(any::<u8>(), 0..=125).prop_map(Step::Ping),
    ];
    (prop::collection::vec(step, 0..8), prop::option::of(bad()))
        .prop_map(|(steps, bad)| Case { steps, bad })
}

/// The frames of a message cut at `cuts`: first its opcode, then continuations.
fn fragments(opcode: u8, payload: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| {
            if payload.is_empty() {
                0
            } else {
                c % payload.len()
            }
        })
        .filter(|&p| p > 0)
        .collect();
    points.sort_unstable();
    points.dedup();
    points.push(payload.len());
    let mut out = vec![];
    let mut start = 0;
    for (i, &end) in points.iter().enumerate() {
        let op = if i == 0 { opcode } else { OP_CONTINUE };
        out.extend(frame(
            i + 1 == points.len(),
            0,
            op,
            &payload[start..end],
            true,
        ));
        start = end;
    }
    out
}

/// What the client received.
#[derive(Default)]
struct Got {
    texts: Vec<String>,
    pongs: Vec<Vec<u8>>,
    code: Option<u16>,
}

impl Got {
    fn take(&mut self, f: raw_ws::Frame) {
        assert!(f.fin, "the sidecar fragments nothing this small");
        match f.opcode {
            OP_TEXT => self
                .texts
                .push(String::from_utf8(f.payload).expect("the sidecar sent invalid UTF-8")),
            OP_PONG => self.pongs.push(f.payload),
            OP_CLOSE => self.code = f.close_code(),
            other => panic!("unexpected frame from the sidecar: opcode {other}"),
        }
    }
}

async fn run_case(shard: &Shard, n: usize, case: &Case) -> Result<(), TestCaseError> {
    let path = format!("/objects/Counter/name/prop{n}/ws");
    let mut ws: RawWs = raw_ws::connect(shard.ingress, &path, raw_ws::GOOD_KEY)
        .await
        .map_err(|r| TestCaseError::fail(format!("handshake refused: {r:?}")))?;
    let mut want = vec![];
    let mut pings = vec![];
    let mut bytes = vec![];
    for step in &case.steps {
        match step {
            Step::Message(Data::Text(t), cuts) => {
                bytes.extend(fragments(OP_TEXT, t.as_bytes(), cuts));
                want.push(t.clone());
            }
            Step::Message(Data::Binary(b), cuts) => {
                bytes.extend(fragments(OP_BINARY, b, cuts));
                want.push(String::from_utf8_lossy(b).into_owned());
            }
            Step::Ping(p) => {
                bytes.extend(frame(true, 0, OP_PING, p, true));
                pings.push(p.clone());
            }
        }
    }
    let mut got = Got::default();
    ws.send(&bytes)
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    match &case.bad {
        None => {
            // Everything is answered before the client closes: then the echo, then the end.
            while got.texts.len() < want.len()
                || (!pings.is_empty() && got.pongs.last() != pings.last())
            {
                let f = match tokio::time::timeout(Duration::from_secs(30), ws.read_frame()).await {
                    Ok(f) => f,
                    Err(_) => {
                        let m_in = shard.metric("stead_websocket_messages_in_total").await;
                        let m_out = shard.metric("stead_websocket_messages_out_total").await;
                        return Err(TestCaseError::fail(format!(
                            "waited 30 s for broadcasts and pongs: got {} texts of {}, {} pongs of {} pings; sidecar in {m_in} out {m_out}; texts {:?}",
                            got.texts.len(), want.len(), got.pongs.len(), pings.len(), got.texts.iter().map(|t| t.chars().take(20).collect::<String>()).collect::<Vec<_>>()
                        )));
                    }
                }
                    .ok_or_else(|| TestCaseError::fail("connection ended early"))?;
                got.take(f);
            }
            ws.send(&raw_ws::close(1000))
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        Some(bad) => {
            // The sidecar may close before reading all of it: ignore a failed write.
            let _ = ws.send(&bad.bytes()).await;
        }
    }
    let frames = tokio::time::timeout(Duration::from_secs(30), async {
        let mut frames = vec![];
        while let Some(f) = ws.read_frame().await {
            frames.push(f);
        }
        frames
    })
    .await
    .map_err(|_| TestCaseError::fail("the sidecar did not end the connection within 30 s"))?;
    let mut after_close = 0;
    for f in frames {
        if got.code.is_some() {
            after_close += 1;
        }
        got.take(f);
    }
    prop_assert_eq!(after_close, 0, "frames after the Close");
    let want_code = case.bad.as_ref().map_or(1000, Bad::code);
    prop_assert_eq!(got.code, Some(want_code));
    let Got { texts, pongs, .. } = got;
    // Broadcasts: numbered 1.. in order, each the message sent; all of them without a bad frame.
    for (i, t) in texts.iter().enumerate() {
        let (seq, text) = t.split_once(':').expect("seq:text");
        prop_assert_eq!(seq, (i + 1).to_string());
        prop_assert_eq!(text, want[i].as_str());
    }
    if case.bad.is_none() {
        prop_assert_eq!(texts.len(), want.len());
    }
    // Pongs answer pings sent, in order (a later ping may replace an unsent pong).
    let mut rest = pings.iter();
    for p in &pongs {
        prop_assert!(
            rest.any(|q| q == p),
            "pong {:?} answers no ping, or out of order",
            p
        );
    }
    Ok(())
}

#[test]
fn arbitrary_frame_sequences_get_their_messages_delivered_and_the_right_close_code() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (shard, _app) = rt.block_on(with_proxy_app(&[]));
    let cases = std::env::var("STEAD_WS_PROP_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(96);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 64,
        ..Config::default()
    });
    let n = std::sync::atomic::AtomicUsize::new(0);
    let result = runner.run(&case(), |case| {
        let n = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        rt.block_on(run_case(&shard, n, &case))?;
        // The sidecar is still up and serving.
        let (status, _) = rt.block_on(shard.send("GET", "/objects/Counter/name/alive/x", ""));
        prop_assert_eq!(status, 200);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
