//! Hostile WebSocket clients cannot grow the sidecar's memory without bound: a member of a busy
//! room that never reads, and a client that floods pings without reading the pongs, are closed
//! (1008, counted in `stead_websockets_slow_closed_total`) while the sidecar's resident memory,
//! read from `/proc`, stays within a bound, and well-behaved members still get every message.
//! Messages that wait for their turns stay within the budget of every socket's input together.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::raw_ws::{self, OP_PING, frame};
use support::{Shard, eventually, with_proxy_app};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

/// How much the sidecar may grow over its baseline while a hostile client pushes: well above
/// one socket's queue bound (16 MiB) plus allocator slack, well below what it grew before.
const RSS_BOUND_KIB: u64 = 64 << 10;

/// The resident set size of a process, in KiB, from `/proc/<pid>/status`.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(shard: &Shard, room: &str) -> Client {
    let url = format!(
        "ws://127.0.0.1:{}/objects/Counter/name/{room}/ws",
        shard.ingress
    );
    tokio_tungstenite::connect_async(url)
        .await
        .expect("handshake")
        .0
}

async fn next_text(ws: &mut futures_util::stream::SplitStream<Client>) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return t.to_string(),
            Ok(Some(Ok(_))) => {}
            other => panic!("a well-behaved member lost its socket: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_member_that_never_reads_is_closed_and_memory_stays_bounded() {
    const MESSAGES: usize = 400;
    const SIZE: usize = 256 << 10;
    let (shard, _app) = with_proxy_app(&[]).await;
    let pid = shard.sidecar_pid();
    let (mut talker_tx, mut talker_rx) = connect(&shard, "busy").await.split();
    let (_, mut listener) = connect(&shard, "busy").await.split();
    // Never polled: its receive buffer fills and it reads nothing more.
    let silent = connect(&shard, "busy").await;
    // One round first, so that the baseline includes the room's database and a turn.
    talker_tx.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(next_text(&mut listener).await, "1:hello");
    assert_eq!(next_text(&mut talker_rx).await, "1:hello");
    let baseline = rss_kib(pid);
    let mut peak = baseline;

    // The well-behaved members stay at most WINDOW messages (8 MiB, half a socket's bound)
    // behind the talker, however slowly this test process runs: it sends a message only when
    // both have received the one WINDOW before it.
    const WINDOW: usize = 32;
    let talker_got = Arc::new(Semaphore::new(WINDOW));
    let listener_got = Arc::new(Semaphore::new(WINDOW));
    let body = "m".repeat(SIZE);
    let (tg, lg) = (talker_got.clone(), listener_got.clone());
    let send = async move {
        for _ in 0..MESSAGES {
            tg.acquire().await.unwrap().forget();
            lg.acquire().await.unwrap().forget();
            talker_tx
                .send(Message::Text(body.clone().into()))
                .await
                .unwrap();
        }
        talker_tx
    };
    let talker_reads = async move {
        for i in 0..MESSAGES {
            let t = next_text(&mut talker_rx).await;
            talker_got.add_permits(1);
            assert!(
                t.starts_with(&format!("{}:", i + 2)),
                "talker got message {i} out of order"
            );
        }
    };
    let listen = async {
        for i in 0..MESSAGES {
            let t = next_text(&mut listener).await;
            listener_got.add_permits(1);
            let (seq, text) = t.split_once(':').unwrap();
            assert_eq!(
                seq,
                (i + 2).to_string(),
                "the listener missed or reordered a message"
            );
            assert_eq!(text.len(), SIZE);
            if i % 8 == 0 {
                peak = peak.max(rss_kib(pid));
                assert!(
                    peak - baseline < RSS_BOUND_KIB,
                    "sidecar grew by {} KiB after {i} messages (bound {RSS_BOUND_KIB} KiB)",
                    peak - baseline
                );
            }
        }
    };
    let (_talker_tx, (), ()) = tokio::join!(send, talker_reads, listen);
    peak = peak.max(rss_kib(pid));
    eprintln!("sidecar RSS: baseline {baseline} KiB, peak {peak} KiB");
    assert!(
        peak - baseline < RSS_BOUND_KIB,
        "grew by {} KiB",
        peak - baseline
    );

    assert_eq!(
        shard.metric("stead_websockets_slow_closed_total").await,
        1.0,
        "exactly the silent member was closed as a slow consumer"
    );
    eventually("the silent member's connection was dropped", || async {
        shard.metric("stead_websockets_open ").await == 2.0
    })
    .await;
    // The silent client, reading at last, finds what its buffers held and then the end; far
    // fewer than every message.
    let (_, mut silent) = silent.split();
    let mut got = 0;
    let end = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match silent.next().await {
                Some(Ok(Message::Text(_))) => got += 1,
                Some(Ok(Message::Close(Some(f)))) => return Some(u16::from(f.code)),
                Some(Ok(Message::Close(None))) | Some(Err(_)) | None => return None,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("the silent member's connection did not end");
    assert!(got < MESSAGES, "the silent member got all {got} messages");
    assert!(matches!(end, None | Some(1008)), "closed with {end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_without_reading_is_closed_and_memory_stays_bounded() {
    const BATCH: usize = 1024;
    const MAX_BATCHES: usize = 4096; // 4 Mi pings of 125 bytes, ~520 MiB of pongs owed
    let (shard, _app) = with_proxy_app(&[]).await;
    let pid = shard.sidecar_pid();
    let mut ws = raw_ws::connect(
        shard.ingress,
        "/objects/Counter/name/flood/ws",
        raw_ws::GOOD_KEY,
    )
    .await
    .expect("handshake");
    // A reading neighbour of the same object stays served.
    let mut neighbour = connect(&shard, "flood").await;
    let baseline = rss_kib(pid);
    let mut batch = vec![];
    for _ in 0..BATCH {
        batch.extend(frame(true, 0, OP_PING, &[b'p'; 125], true));
    }
    let mut closed_after = None;
    for b in 0..MAX_BATCHES {
        let wrote = tokio::time::timeout(Duration::from_secs(60), ws.send(&batch))
            .await
            .expect("the sidecar neither read the pings nor closed the connection");
        if wrote.is_err() {
            closed_after = Some(b);
            break;
        }
        if b % 16 == 0 {
            let grown = rss_kib(pid).saturating_sub(baseline);
            assert!(
                grown < RSS_BOUND_KIB,
                "sidecar grew by {grown} KiB after {} pings (bound {RSS_BOUND_KIB} KiB)",
                b * BATCH
            );
        }
    }
    let grown = rss_kib(pid).saturating_sub(baseline);
    eprintln!(
        "sidecar RSS: baseline {baseline} KiB, +{grown} KiB; closed after {:?} pings",
        closed_after.map(|b| b * BATCH)
    );
    assert!(grown < RSS_BOUND_KIB, "sidecar grew by {grown} KiB");
    assert!(
        closed_after.is_some(),
        "the flooding client was never closed after {} pings",
        MAX_BATCHES * BATCH
    );
    assert_eq!(
        shard.metric("stead_websockets_slow_closed_total").await,
        1.0
    );
    neighbour
        .send(Message::Text("still here".into()))
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), neighbour.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                assert_eq!(t.as_str(), "1:still here");
                break;
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("the neighbour lost its socket: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_may_send_pings_in_a_burst() {
    const PINGS: u64 = 8192;
    let (shard, _app) = with_proxy_app(&[]).await;
    let mut ws = raw_ws::connect(
        shard.ingress,
        "/objects/Counter/name/burst/ws",
        raw_ws::GOOD_KEY,
    )
    .await
    .expect("handshake");
    let mut burst = vec![];
    for i in 0..PINGS {
        burst.extend(frame(true, 0, OP_PING, &i.to_be_bytes(), true));
    }
    ws.send(&burst).await.unwrap();
    // Pongs may stand for several pings (RFC 6455 §5.5.3), but the last ping is answered.
    let mut pongs = 0;
    loop {
        let f = tokio::time::timeout(Duration::from_secs(60), ws.read_frame())
            .await
            .expect("no pong for the last ping after 60 s")
            .expect("the sidecar closed a client that reads");
        assert_eq!(f.opcode, raw_ws::OP_PONG, "{f:?}");
        pongs += 1;
        if f.payload == (PINGS - 1).to_be_bytes() {
            break;
        }
    }
    assert!(pongs <= PINGS);
    assert_eq!(
        shard.metric("stead_websockets_slow_closed_total").await,
        0.0
    );
}

/// Two clients send 16 messages of 64 KiB to an object whose turn is held: the messages wait in
/// its mailbox. Together they may hold at most `--max-buffered-socket-bytes` (256 KiB here); past
/// it the sidecar stops reading the clients. Once the turn ends, every message is handled, in
/// order, and the budget is given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_waiting_for_their_turns_stay_within_the_socket_budget() {
    const BUDGET: usize = 256 << 10;
    const EACH: usize = 8;
    let (shard, app) = with_proxy_app(&["--max-buffered-socket-bytes", &BUDGET.to_string()]).await;
    let mut senders = vec![];
    let mut readers = vec![];
    for _ in 0..2 {
        let (tx, rx) = connect(&shard, "held").await.split();
        senders.push(tx);
        readers.push(rx);
    }
    let holding = tokio::spawn(post_status(
        shard.ingress,
        "/objects/Counter/name/held/hold?ms=20000",
    ));
    eventually("the object's turn is held", || async {
        app.events_of("request")
            .iter()
            .any(|e| e.get(":path").map(String::as_str) == Some("/hold"))
    })
    .await;
    let sending: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(who, mut tx)| {
            tokio::spawn(async move {
                for i in 0..EACH {
                    let text = format!("{who}-{i}-{}", "x".repeat(64 << 10));
                    if tx.send(Message::text(text)).await.is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    eventually("the waiting messages take the budget", || async {
        shard
            .metric("stead_websocket_messages_buffered_bytes ")
            .await
            >= (BUDGET / 2) as f64
    })
    .await;
    for _ in 0..5 {
        let held = shard
            .metric("stead_websocket_messages_buffered_bytes ")
            .await;
        assert!(
            held <= BUDGET as f64,
            "{held} bytes of messages wait, over {BUDGET}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        app.events_of("websocket-message").is_empty(),
        "no message was handled while the turn was held"
    );

    assert_eq!(holding.await.unwrap(), 200);
    for s in sending {
        s.await.unwrap();
    }
    eventually("every message is handled", || async {
        app.events_of("websocket-message").len() == 2 * EACH
    })
    .await;
    eventually("the budget is given back", || async {
        shard
            .metric("stead_websocket_messages_buffered_bytes ")
            .await
            == 0.0
    })
    .await;
    // Each client's messages were handled in the order it sent them: the broadcasts (the
    // room's number, then the text) each reader got name them in that order.
    let mut rx = readers.pop().unwrap();
    let mut next = [0usize; 2];
    for _ in 0..2 * EACH {
        let text = next_text(&mut rx).await;
        let (_, rest) = text.split_once(':').expect("{seq}:{text}");
        let mut parts = rest.splitn(3, '-');
        let who: usize = parts.next().unwrap().parse().unwrap();
        let i: usize = parts.next().unwrap().parse().unwrap();
        assert_eq!(i, next[who], "client {who}'s messages out of order");
        next[who] += 1;
    }
}

/// POSTs to `path` on the ingress at `port` (no body) and returns the answer's status.
async fn post_status(port: u16, path: &'static str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = vec![];
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status line")
}
