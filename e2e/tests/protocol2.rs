//! App protocol 2 (docs/app-protocol.md, "Protocol 2") with real processes: one `stead sidecar`
//! and the counter example, speaking protocol 2 (the SDK's default) or forced to protocol 1
//! with `STEAD_APP_PROTOCOL=1`. A tap between the app and the app API counts the app's calls.
//! Build the binaries first (`cargo build -p stead-sidecar -p counter -p chat --bins`).

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use stead_e2e::Client;
use stead_e2e::one_shard::{AppProtocol, AppTransport, OneShard};
use tokio_tungstenite::tungstenite::Message;

/// One shard at a time: the machine is small, and the scenarios only poll.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn counter(protocol: AppProtocol) -> OneShard {
    OneShard::start("counter", "Counter", protocol)
        .await
        .unwrap_or_else(|e| panic!("start a sidecar and the counter ({protocol:?}): {e:#}"))
}

fn object(shard: &OneShard, name: &str, rest: &str) -> String {
    shard.url(&format!("/objects/Counter/name/{name}{rest}"))
}

async fn post(client: &Client, url: &str, body: &str) -> (u16, String) {
    let r = client
        .post(url, body)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (r.status, r.body)
}

async fn get(client: &Client, url: &str) -> (u16, String) {
    let r = client.get(url).await.unwrap_or_else(|e| panic!("{e}"));
    (r.status, r.body)
}

/// `clients` concurrent clients each increment the object `name` `each` times; every answer is
/// a distinct value and together they are exactly 1..=clients×each.
async fn increments_are_exact(shard: &OneShard, name: &str, clients: u64, each: u64) {
    let url = object(shard, name, "/increment");
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let client = shard.client().clone();
            let url = url.clone();
            tokio::spawn(async move {
                let mut seen = vec![];
                for _ in 0..each {
                    let (status, body) = post(&client, &url, "").await;
                    assert_eq!(status, 200, "{body}");
                    seen.push(body.trim().parse::<u64>().expect("a number"));
                }
                seen
            })
        })
        .collect();
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.expect("a client task"));
    }
    all.sort_unstable();
    let expected: Vec<u64> = (1..=clients * each).collect();
    assert_eq!(all, expected, "the answered values are not exactly serial");
    let (_, value) = get(shard.client(), &object(shard, name, "/value")).await;
    assert_eq!(value, (clients * each).to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counters_are_exact_under_concurrency_with_protocol_2() {
    let _one = ONE_AT_A_TIME.lock().await;
    let shard = counter(AppProtocol::Latest).await;
    increments_are_exact(&shard, "hot", 8, 25).await;
    increments_are_exact(&shard, "other", 4, 10).await;
    // The writes travelled with the answers: not one kv/put call.
    assert_eq!(
        shard.tap().count("/v1/kv/put"),
        0,
        "calls: {:?}",
        shard.tap().counts()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counters_are_exact_with_protocol_1_forced() {
    let _one = ONE_AT_A_TIME.lock().await;
    let shard = counter(AppProtocol::One).await;
    increments_are_exact(&shard, "hot", 8, 25).await;
    // Protocol 1 as it always was: each increment is one kv/get and one kv/put call (and the
    // final GET /value one more kv/get).
    let calls = shard.tap().counts();
    assert_eq!(calls.get("/v1/kv/put"), Some(&200), "{calls:?}");
    assert_eq!(calls.get("/v1/kv/get"), Some(&201), "{calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_turn_that_writes_then_answers_500_leaves_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let shard = counter(AppProtocol::Latest).await;
    let c = shard.client();
    for n in 1..=2 {
        assert_eq!(
            post(c, &object(&shard, "r", "/increment"), "").await,
            (200, n.to_string())
        );
    }
    let (status, body) = post(c, &object(&shard, "r", "/increment?fail=1"), "").await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("failed_on_purpose"), "{body}");
    assert_eq!(
        get(c, &object(&shard, "r", "/value")).await,
        (200, "2".into())
    );
    assert_eq!(
        post(c, &object(&shard, "r", "/increment"), "").await,
        (200, "3".into())
    );
    assert_eq!(
        shard.tap().count("/v1/kv/put"),
        0,
        "{:?}",
        shard.tap().counts()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_over_the_key_limit_still_fails_at_the_call() {
    let _one = ONE_AT_A_TIME.lock().await;
    let shard = counter(AppProtocol::Latest).await;
    let c = shard.client();
    let put_raw = object(&shard, "limits", "/put-raw");
    // Small: buffered, no call.
    let (status, body) = post(c, &put_raw, r#"{"key": "small", "value": 1}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(shard.tap().count("/v1/kv/put"), 0);

    // Over the sidecar's key limit: the refusal reaches the app at the call, which passes it on.
    let long = "k".repeat(2049);
    let (status, body) = post(c, &put_raw, &format!(r#"{{"key": "{long}", "value": 1}}"#)).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("key_too_large"), "{body}");
    assert_eq!(shard.tap().count("/v1/kv/put"), 1);

    // Legal, but large enough to be a direct call: a key of 600 bytes, a value of 20 KiB.
    let mid = "m".repeat(600);
    let (status, body) = post(c, &put_raw, &format!(r#"{{"key": "{mid}", "value": 2}}"#)).await;
    assert_eq!(status, 200, "{body}");
    let big = "v".repeat(20 << 10);
    let (status, body) = post(
        c,
        &put_raw,
        &format!(r#"{{"key": "big", "value": "{big}"}}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(shard.tap().count("/v1/kv/put"), 3);

    let get_raw = |key: &str| object(&shard, "limits", &format!("/get-raw?key={key}"));
    assert_eq!(get(c, &get_raw("small")).await, (200, "1".into()));
    assert_eq!(get(c, &get_raw(&mid)).await, (200, "2".into()));
    assert_eq!(get(c, &get_raw("big")).await, (200, format!("\"{big}\"")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn values_written_with_protocol_2_are_read_by_protocol_1_and_back() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut shard = counter(AppProtocol::Latest).await;
    let inc = object(&shard, "shared", "/increment");
    let value = object(&shard, "shared", "/value");
    let put_raw = object(&shard, "shared", "/put-raw");
    let note = object(&shard, "shared", "/get-raw?key=note");
    let c = shard.client().clone();

    for n in 1..=3 {
        assert_eq!(post(&c, &inc, "").await, (200, n.to_string()));
    }
    let (status, _) = post(&c, &put_raw, r#"{"key": "note", "value": "from 2"}"#).await;
    assert_eq!(status, 200);
    assert_eq!(
        shard.tap().count("/v1/kv/put"),
        0,
        "protocol 2 was not spoken"
    );

    shard.restart_app(AppProtocol::One).await.unwrap();
    let puts = shard.tap().count("/v1/kv/put");
    assert_eq!(get(&c, &value).await, (200, "3".into()));
    assert_eq!(get(&c, &note).await, (200, "\"from 2\"".into()));
    assert_eq!(post(&c, &inc, "").await, (200, "4".into()));
    let (status, _) = post(&c, &put_raw, r#"{"key": "note", "value": "from 1"}"#).await;
    assert_eq!(status, 200);
    assert_eq!(
        shard.tap().count("/v1/kv/put"),
        puts + 2,
        "protocol 1 was not spoken"
    );

    shard.restart_app(AppProtocol::Latest).await.unwrap();
    assert_eq!(get(&c, &value).await, (200, "4".into()));
    assert_eq!(get(&c, &note).await, (200, "\"from 1\"".into()));
    assert_eq!(post(&c, &inc, "").await, (200, "5".into()));
    assert_eq!(shard.tap().count("/v1/kv/put"), puts + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hot_counter_increment_makes_no_storage_call_after_the_first_event() {
    let _one = ONE_AT_A_TIME.lock().await;
    let shard = counter(AppProtocol::Latest).await;
    let c = shard.client();
    let inc = object(&shard, "hot", "/increment");
    assert_eq!(post(c, &inc, "").await, (200, "1".into()));
    // At most one read: none with eager state, one kv/get without.
    let first = shard.tap().counts();
    assert!(shard.tap().count("/v1/") <= 1, "{first:?}");
    for n in 2..=50 {
        assert_eq!(post(c, &inc, "").await, (200, n.to_string()));
    }
    assert_eq!(
        shard.tap().counts(),
        first,
        "increments after the first made app API calls"
    );
}

/// The next chat message (JSON text) on `socket`, skipping anything else; panics after 10 s.
async fn next_chat<S>(socket: &mut S) -> serde_json::Value
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a chat message within 10 s")
            .expect("the socket is open")
            .expect("a message");
        if let Message::Text(text) = msg
            && let Ok(json) = serde_json::from_str::<serde_json::Value>(text.as_str())
            && json.get("seq").is_some()
        {
            return json;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_chat_room_works_with_protocol_2_and_a_rolled_back_message_leaves_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let shard = OneShard::start("chat", "ChatRoom", AppProtocol::Latest)
        .await
        .unwrap_or_else(|e| panic!("start a sidecar and the chat: {e:#}"));
    let ws = |name: &str| {
        shard
            .url(&format!("/objects/ChatRoom/name/p2/ws?name={name}"))
            .replacen("http://", "ws://", 1)
    };
    let (mut alice, _) = tokio_tungstenite::connect_async(ws("alice")).await.unwrap();
    let (mut bob, _) = tokio_tungstenite::connect_async(ws("bob")).await.unwrap();
    alice.send(Message::text("!rollback this")).await.unwrap();
    alice.send(Message::text("hello")).await.unwrap();
    // The rolled-back message was neither stored nor sent: the first both see is `hello`, #1.
    for socket in [&mut alice, &mut bob] {
        let m = next_chat(socket).await;
        assert_eq!(
            (m["seq"].as_u64(), m["text"].as_str()),
            (Some(1), Some("hello"))
        );
        assert_eq!(m["name"], "alice");
    }
    let history = shard
        .client()
        .get(&shard.url("/objects/ChatRoom/name/p2/messages"))
        .await
        .unwrap();
    assert_eq!(history.status, 200);
    let history: Vec<serde_json::Value> = serde_json::from_str(&history.body).unwrap();
    let texts: Vec<&str> = history.iter().filter_map(|m| m["text"].as_str()).collect();
    assert_eq!(texts, ["hello"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_app_refuses_to_start_with_an_unknown_protocol() {
    let counter = stead_e2e::local::built_binary("counter").unwrap();
    let port = stead_e2e::local::free_port().unwrap();
    let mut cmd = std::process::Command::new(counter);
    stead_e2e::local::die_with_parent(&mut cmd);
    let child = cmd
        .env(stead_e2e::one_shard::ENV_APP_PROTOCOL, "3")
        .env(
            stead_core::protocol::ENV_APP_ADDR,
            format!("127.0.0.1:{port}"),
        )
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("the app exits at once")
    .unwrap()
    .unwrap();
    assert!(!out.status.success());
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("STEAD_APP_PROTOCOL must be 1 or 2"), "{said}");
    // Nothing listened.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_counter_over_a_unix_socket_is_exact_with_protocol_2() {
    let _one = ONE_AT_A_TIME.lock().await;
    let shard = OneShard::start_over(
        "counter",
        "Counter",
        AppProtocol::Latest,
        AppTransport::Unix,
    )
    .await
    .unwrap_or_else(|e| panic!("start a sidecar and the counter on a Unix socket: {e:#}"));
    increments_are_exact(&shard, "unix", 4, 25).await;
    assert_eq!(
        shard.tap().count("/v1/kv/put"),
        0,
        "{:?}",
        shard.tap().counts()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_is_ok_with_the_app_on_a_unix_socket() {
    let _one = ONE_AT_A_TIME.lock().await;
    let shard = OneShard::start_over(
        "counter",
        "Counter",
        AppProtocol::Latest,
        AppTransport::Unix,
    )
    .await
    .unwrap_or_else(|e| panic!("start a sidecar and the counter on a Unix socket: {e:#}"));
    // The app answers through the sidecar, so it is ready.
    let (status, body) = post(shard.client(), &object(&shard, "r", "/increment"), "").await;
    assert_eq!((status, body.as_str()), (200, "1"));
    assert_eq!(shard.readyz().await, Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_kill_9_of_the_sidecar_the_running_app_serves_only_durable_values() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut shard = counter(AppProtocol::Latest).await;
    let inc = object(&shard, "k9", "/increment");
    let value = object(&shard, "k9", "/value");
    // Over 64 KiB of state, so that no eager state comes with the first event after the
    // restart: what the app then knows comes from its cache or from calls.
    let ballast = format!(
        r#"{{"key": "ballast", "value": "{}"}}"#,
        "b".repeat(70 << 10)
    );
    let (status, body) = post(shard.client(), &object(&shard, "k9", "/put-raw"), &ballast).await;
    assert_eq!(status, 200, "{body}");
    // Load on one hot object; the sidecar is killed under it.
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (client, inc) = (shard.client().clone(), inc.clone());
            let (acked, stop) = (acked.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    match client.post(&inc, "").await {
                        Ok(r) if r.status == 200 => {
                            let n = r.number().expect("a number");
                            acked.fetch_max(n, std::sync::atomic::Ordering::SeqCst);
                        }
                        _ => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            })
        })
        .collect();
    while acked.load(std::sync::atomic::Ordering::SeqCst) < 100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shard.kill_sidecar();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    shard.start_sidecar().await.unwrap();
    let acked = acked.load(std::sync::atomic::Ordering::SeqCst);

    // The app kept running through the restart. What it answers now must be what is on disk
    // (what a fresh app process reads), not what it answered before the kill: an answered turn
    // whose commit the kill lost must not live on in its cache.
    let (status, through_old_app) = get(shard.client(), &value).await;
    assert_eq!(status, 200);
    shard.restart_app(AppProtocol::Latest).await.unwrap();
    let (status, through_new_app) = get(shard.client(), &value).await;
    assert_eq!(status, 200);
    assert_eq!(through_old_app, through_new_app);
    let durable: u64 = through_new_app.parse().unwrap();
    assert!(durable >= acked, "{durable} < {acked} acknowledged");
    assert_eq!(
        post(shard.client(), &inc, "").await,
        (200, (durable + 1).to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_buffered_write_over_a_smaller_namespace_limit_fails_the_turn_at_its_end() {
    let _one = ONE_AT_A_TIME.lock().await;
    // Keys of at most 256 bytes: a key of 300 is buffered by the SDK (it buffers up to 512), so
    // the sidecar refuses it with the answer, and the whole turn rolls back.
    let shard = OneShard::start_with_args(
        "counter",
        "Counter",
        AppProtocol::Latest,
        AppTransport::Tcp,
        &["--max-key-bytes", "256"],
    )
    .await
    .unwrap_or_else(|e| panic!("start a sidecar and the counter: {e:#}"));
    let c = shard.client();
    assert_eq!(
        post(c, &object(&shard, "small", "/increment"), "").await,
        (200, "1".into())
    );
    let key = "k".repeat(300);
    let (status, body) = post(
        c,
        &object(&shard, "small", "/put-raw"),
        &format!(r#"{{"key": "{key}", "value": 1}}"#),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("key_too_large"), "{body}");
    let (status, _) = get(c, &object(&shard, "small", &format!("/get-raw?key={key}"))).await;
    assert_eq!(status, 404, "the refused write was kept");
    // The object goes on from its last committed state.
    assert_eq!(
        post(c, &object(&shard, "small", "/increment"), "").await,
        (200, "2".into())
    );
}
