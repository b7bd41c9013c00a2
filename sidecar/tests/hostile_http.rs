//! Hostile HTTP clients against a real sidecar and counter app: idle, slow and half-sent
//! connections are closed on every port, a stalled body gets 408, HTTP/2 with prior knowledge
//! reaches the app, app failures do not name the app's address, a flood of connections
//! leaves descriptors for storage and health (checked in `/proc`), and request bodies held in
//! memory stay within their budget.

mod support;

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use stead_core::{ClassName, ObjectId, ObjectName, Ring};
use support::{Shard, counter_bin, eventually, free_port, wait_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Short timeouts so that the server's closes come quickly; the tests never assert how long
/// anything took.
const QUICK: [&str; 6] = [
    "--header-timeout",
    "1s",
    "--keepalive-timeout",
    "1s",
    "--body-timeout",
    "1s",
];

/// A Counter name whose slot shard 0 owns in a two-shard ring.
fn name_owned_by_shard_0() -> String {
    let ring = Ring::new(1, 4096, 2);
    let class = ClassName::new("Counter").unwrap();
    (0..)
        .map(|i| format!("obj{i}"))
        .find(|n| {
            let id = ObjectId::named(&class, &ObjectName::new(n).unwrap());
            ring.owner(id.slot(4096)) == 0
        })
        .unwrap()
}

/// Shard 0 of a two-shard namespace (its peer port open, with token `secret`); shard 1 need
/// not run for these tests.
async fn shard_with_peer_port(extra: &[&str]) -> (Shard, u16) {
    let peer = free_port();
    let peers = format!("127.0.0.1:{peer},127.0.0.1:{}", free_port());
    let peer_addr = format!("127.0.0.1:{peer}");
    let mut args = vec![
        "--shard-ordinal",
        "0",
        "--peers",
        &peers,
        "--peer-addr",
        &peer_addr,
        "--peer-token",
        "secret",
    ];
    args.extend_from_slice(extra);
    let shard = Shard::start(&args).await;
    wait_port(peer).await;
    (shard, peer)
}

/// Reads until the server closes the connection (EOF or reset); returns what it sent. Panics
/// if the connection is still open after 30 s (a bound for the test, not a timing claim).
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = vec![];
    let read_all = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read_all)
        .await
        .expect("the server never closed the connection");
    got
}

/// Status and JSON body of one raw HTTP/1.1 answer.
fn parse_answer(raw: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole answer head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

async fn counter_value(shard: &Shard, name: &str) -> String {
    let (_, v) = shard
        .send("GET", &format!("/objects/Counter/name/{name}/value"), "")
        .await;
    v.trim().to_owned()
}

#[tokio::test]
async fn idle_connections_are_closed_on_every_port() {
    let (shard, peer) = shard_with_peer_port(&QUICK).await;
    for port in [shard.ingress, shard.admin, peer] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let got = read_until_closed(&mut s).await;
        assert!(got.is_empty(), "port {port} answered {got:?}");
    }
    assert!(
        shard
            .metric("stead_connections_timed_out_total{port=\"ingress\"}")
            .await
            >= 1.0
    );
    assert!(
        shard
            .metric("stead_connections_timed_out_total{port=\"admin\"}")
            .await
            >= 1.0
    );
    assert!(
        shard
            .metric("stead_connections_timed_out_total{port=\"peer\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn slowloris_headers_are_closed_on_every_port() {
    let (shard, peer) = shard_with_peer_port(&QUICK).await;
    for port in [shard.ingress, shard.admin, peer] {
        let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (mut rd, mut wr) = s.into_split();
        // One byte every 100 ms, a head that never ends.
        let drip = tokio::spawn(async move {
            let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ";
            for b in head.iter().chain(std::iter::repeat(&b'a')).take(300) {
                if wr.write_all(&[*b]).await.is_err() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            false
        });
        let mut got = vec![];
        let closed = tokio::time::timeout(Duration::from_secs(30), async {
            let mut buf = [0u8; 1024];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "port {port} kept a slowloris connection");
        assert!(got.is_empty(), "port {port} answered {got:?}");
        drip.abort();
    }
}

#[tokio::test]
async fn half_sent_headers_are_closed_on_every_port() {
    let (shard, peer) = shard_with_peer_port(&QUICK).await;
    let name = name_owned_by_shard_0();
    for port in [shard.ingress, shard.admin, peer] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let head = format!("POST /objects/Counter/name/{name}/increment HTTP/1.1\r\nHost: x\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        let got = read_until_closed(&mut s).await;
        assert!(got.is_empty(), "port {port} answered {got:?}");
    }
    assert_eq!(counter_value(&shard, &name).await, "0");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_its_answer() {
    let (shard, peer) = shard_with_peer_port(&QUICK).await;
    let name = name_owned_by_shard_0();
    let requests = [
        (
            shard.ingress,
            format!(
                "POST /objects/Counter/name/{name}/increment HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
            ),
        ),
        (
            shard.admin,
            "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
        ),
        (
            peer,
            format!(
                "POST /objects/Counter/name/{name}/increment HTTP/1.1\r\nHost: x\r\nstead-peer-token: secret\r\nContent-Length: 0\r\n\r\n"
            ),
        ),
    ];
    for (port, request) in requests {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        // The whole answer arrives, then the server closes the idle connection.
        let got = read_until_closed(&mut s).await;
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "port {port}: {text}");
    }
    assert_eq!(counter_value(&shard, &name).await, "2");
}

#[tokio::test]
async fn a_half_sent_body_gets_408_and_the_connection_closes() {
    let (shard, peer) = shard_with_peer_port(&QUICK).await;
    let name = name_owned_by_shard_0();
    for (port, token) in [(shard.ingress, ""), (peer, "stead-peer-token: secret\r\n")] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let head = format!(
            "POST /objects/Counter/name/{name}/increment HTTP/1.1\r\nHost: x\r\n{token}Content-Length: 100\r\n\r\n0123456789"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let got = read_until_closed(&mut s).await;
        let (status, body) = parse_answer(&got);
        assert_eq!(status, 408, "port {port}: {body}");
        assert_eq!(body["error"]["code"], "body_timeout", "port {port}");
    }
    // The admin port answers without reading a body, then closes.
    let mut s = TcpStream::connect(("127.0.0.1", shard.admin))
        .await
        .unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123")
        .await
        .unwrap();
    let got = read_until_closed(&mut s).await;
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    // No turn ran.
    assert_eq!(counter_value(&shard, &name).await, "0");
}

#[tokio::test]
async fn http2_with_prior_knowledge_reaches_the_app() {
    let shard = Shard::start(&[]).await;
    let stream = TcpStream::connect(("127.0.0.1", shard.ingress))
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let mut send = async |method: &str, path: &str| {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("http://127.0.0.1:{}{path}", shard.ingress))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.expect("h2 request");
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    for expected in 1..=3 {
        let (status, body) = send("POST", "/objects/Counter/name/h2/increment").await;
        assert_eq!((status, body.trim()), (200, expected.to_string().as_str()));
    }
    let (status, _) = send("GET", "/").await;
    assert_eq!(status, 200, "stateless request over h2");
    assert_eq!(counter_value(&shard, "h2").await, "3");
}

/// Sends `method path` over an HTTP/2 prior-knowledge connection to `port`.
async fn h2_request(port: u16, method: &str, path: &str) -> (u16, String) {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.expect("h2 request");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).trim().to_owned())
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_its_answers() {
    let shard = Shard::start(&QUICK).await;
    let stream = TcpStream::connect(("127.0.0.1", shard.ingress))
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let req = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://127.0.0.1:{}/objects/Counter/name/h2idle/increment",
            shard.ingress
        ))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.expect("h2 request");
    assert_eq!(resp.status(), 200);
    drop(resp);
    // The client keeps the connection (and its sender) but sends nothing: the server closes it.
    tokio::time::timeout(Duration::from_secs(30), conn)
        .await
        .expect("the server never closed the idle HTTP/2 connection")
        .unwrap()
        .ok();
    drop(sender);
}

#[tokio::test]
async fn http2_requests_are_forwarded_to_the_owning_shard_as_http1() {
    let peers = [free_port(), free_port()];
    let peer_list = format!("127.0.0.1:{},127.0.0.1:{}", peers[0], peers[1]);
    let mut shards = vec![];
    for (i, peer) in peers.iter().enumerate() {
        let ordinal = i.to_string();
        let peer_addr = format!("127.0.0.1:{peer}");
        shards.push(
            Shard::start(&[
                "--shard-ordinal",
                &ordinal,
                "--peers",
                &peer_list,
                "--peer-addr",
                &peer_addr,
                "--peer-token",
                "secret",
            ])
            .await,
        );
    }
    for p in peers {
        wait_port(p).await;
    }
    let ring = Ring::new(1, 4096, 2);
    let class = ClassName::new("Counter").unwrap();
    let name = (0..)
        .map(|i| format!("far{i}"))
        .find(|n| {
            let id = ObjectId::named(&class, &ObjectName::new(n).unwrap());
            ring.owner(id.slot(4096)) == 1
        })
        .unwrap();
    let path = format!("/objects/Counter/name/{name}/increment");
    for expected in ["1", "2"] {
        let (status, body) = h2_request(shards[0].ingress, "POST", &path).await;
        assert_eq!((status, body.as_str()), (200, expected));
    }
    assert_eq!(counter_value(&shards[1], &name).await, "2");
    assert!(
        shards[0]
            .metric("stead_forwards_total{reason=\"not_owner\"}")
            .await
            >= 2.0
    );
}

#[tokio::test]
async fn app_failures_do_not_name_the_app_address() {
    // Nothing listens on the app port.
    let app_port = free_port();
    let shard = Shard::start_for(app_port, free_port(), &[]).await;
    for path in ["/objects/Counter/name/a/increment", "/"] {
        let (status, body) = shard.send("POST", path, "").await;
        assert_eq!(status, 502, "{path}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "app_failed");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            !message.contains("127.0.0.1") && !message.contains(&app_port.to_string()),
            "{message}"
        );
    }
    let url = format!("http://127.0.0.1:{}/readyz", shard.admin);
    let (status, body) = shard.send_with("GET", &url, &[], "").await.unwrap();
    assert_eq!(status, 503);
    assert!(!body.contains(&app_port.to_string()), "{body}");
}

/// A sidecar and counter app started under a descriptor limit of `nofile` (soft and hard),
/// killed on drop (and with the test process, through PR_SET_PDEATHSIG).
struct LimitedShard {
    ingress: u16,
    admin: u16,
    data_dir: std::path::PathBuf,
    children: Vec<Child>,
}

impl LimitedShard {
    async fn start(nofile: u64, extra: &[&str]) -> LimitedShard {
        let (ingress, api, admin, app) = (free_port(), free_port(), free_port(), free_port());
        let data_dir =
            std::env::temp_dir().join(format!("stead-test-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&data_dir).unwrap();
        let limited = move || {
            let lim = libc::rlimit {
                rlim_cur: nofile,
                rlim_max: nofile,
            };
            // SAFETY: setrlimit and prctl in the child between fork and exec, on our own
            // values only.
            unsafe {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            }
            Ok(())
        };
        let mut app_cmd = Command::new(counter_bin());
        app_cmd
            .env("STEAD_APP_ADDR", format!("127.0.0.1:{app}"))
            .env("STEAD_API_URL", format!("http://127.0.0.1:{api}"))
            .stdin(Stdio::null());
        let mut sidecar_cmd = Command::new(env!("CARGO_BIN_EXE_stead"));
        sidecar_cmd
            .arg("sidecar")
            .args(["--ingress", &format!("127.0.0.1:{ingress}")])
            .args(["--api", &format!("127.0.0.1:{api}")])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .args(["--app", &format!("127.0.0.1:{app}")])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--classes", "Counter"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        // SAFETY: the hook calls only async-signal-safe functions.
        unsafe {
            app_cmd.pre_exec(limited);
            sidecar_cmd.pre_exec(limited);
        }
        let children = vec![
            app_cmd.spawn().expect("start counter"),
            sidecar_cmd.spawn().expect("start sidecar"),
        ];
        wait_port(ingress).await;
        wait_port(admin).await;
        wait_port(app).await;
        LimitedShard {
            ingress,
            admin,
            data_dir,
            children,
        }
    }

    fn sidecar_pid(&self) -> u32 {
        self.children[1].id()
    }
}

impl Drop for LimitedShard {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// One request on a raw keep-alive connection; returns the status and body.
async fn request_on(stream: &mut TcpStream, method: &str, path: &str) -> (u16, String) {
    let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut got = vec![];
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf))
            .await
            .expect("answer within 30 s")
            .unwrap();
        assert!(n > 0, "connection closed before the answer");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if body.len() >= len {
                let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                return (status, body[..len].to_owned());
            }
        }
    }
}

async fn admin_get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    request_on(&mut s, "GET", path).await
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {prefix} not found"))
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Request bodies are read whole before their turn, so uploads that are slow to arrive hold
/// memory. Two uploads that declared 2 MiB each and sent only a little hold the whole budget of
/// 4 MiB. A third request is refused at once with 503 and Retry-After, and nothing of it is
/// written; once the slow uploads are gone, the same request goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_held_in_memory_stay_within_their_budget() {
    const MIB: usize = 1 << 20;
    let budget = (4 * MIB).to_string();
    let shard = Shard::start(&[
        "--max-buffered-request-bytes",
        &budget,
        "--max-request-bytes",
        &(2 * MIB).to_string(),
        "--body-timeout",
        "5m",
    ])
    .await;
    let mut slow = vec![];
    for i in 0..2 {
        let mut s = TcpStream::connect(("127.0.0.1", shard.ingress))
            .await
            .unwrap();
        let head = format!(
            "POST /objects/Counter/name/slow{i}/increment HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            2 * MIB
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&[b'x'; 1024]).await.unwrap();
        slow.push(s);
    }
    eventually("the two slow uploads hold the budget", || async {
        shard.metric("stead_request_bodies_buffered_bytes ").await == (4 * MIB) as f64
    })
    .await;

    let (status, body) = shard
        .send_with(
            "POST",
            &shard.url("/objects/Counter/name/victim/increment"),
            &[],
            "one more",
        )
        .await
        .expect("request");
    assert_eq!(status, 503, "{body}");
    let json: Value = serde_json::from_str(&body).expect("JSON error body");
    assert_eq!(
        json["error"]["code"], "request_bodies_over_budget",
        "{body}"
    );
    // The stateless front door reads its body whole too, within the same budget.
    let (status, body) = shard
        .send_with("POST", &shard.url("/"), &[], "to the front door")
        .await
        .expect("request");
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        shard
            .send("GET", "/objects/Counter/name/victim/value", "")
            .await,
        (200, "0".into())
    );

    drop(slow);
    eventually("the slow uploads give the budget back", || async {
        shard.metric("stead_request_bodies_buffered_bytes ").await == 0.0
    })
    .await;
    assert_eq!(
        shard
            .send("POST", "/objects/Counter/name/victim/increment", "now")
            .await,
        (200, "1".into())
    );
}

/// The sidecar refuses to start with a request limit its body budget could never hold.
#[tokio::test]
async fn a_request_limit_over_the_body_budget_is_refused_at_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stead"))
        .arg("sidecar")
        .args(["--ingress", &format!("127.0.0.1:{}", free_port())])
        .args(["--app", "127.0.0.1:1"])
        .args(["--classes", "Counter"])
        .args([
            "--max-request-bytes",
            "2000000",
            "--max-buffered-request-bytes",
            "1000000",
        ])
        .arg("--data-dir")
        .arg(std::env::temp_dir().join(format!("stead-test-budget-{}", std::process::id())))
        .output()
        .expect("run the sidecar");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "--max-request-bytes (2000000) is more than --max-buffered-request-bytes (1000000)"
        ),
        "{stderr}"
    );
}

/// The default `--max-open-objects` (4096 databases, 8192 descriptors) under a descriptor limit
/// of 1024: the sidecar keeps open only as many databases as fit, so that writing many objects
/// never runs out of descriptors, and the ingress keeps a usable bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_object_cap_beyond_the_descriptor_limit_is_fitted_to_it() {
    const NOFILE: u64 = 1024;
    let shard = LimitedShard::start(NOFILE, &[]).await;
    let (_, text) = admin_get(shard.admin, "/metrics").await;
    let cap = metric(&text, "stead_objects_open_max ") as usize;
    assert!(
        cap > 0 && 2 * cap <= NOFILE as usize * 3 / 4,
        "open databases capped at {cap} under {NOFILE} descriptors"
    );
    let ingress = metric(&text, "stead_connections_max{port=\"ingress\"}") as usize;
    assert!(
        ingress >= 64,
        "the ingress holds only {ingress} connections"
    );
    // Twice as many new objects as fit open at once, on one connection: each one's database
    // is created while the others stay open up to the cap.
    let mut conn = TcpStream::connect(("127.0.0.1", shard.ingress))
        .await
        .unwrap();
    for i in 0..2 * cap {
        let (status, body) = request_on(
            &mut conn,
            "POST",
            &format!("/objects/Counter/name/many{i}/increment"),
        )
        .await;
        assert_eq!((status, body.trim()), (200, "1"), "object many{i}: {body}");
    }
    // Storage stayed inside its share: at most `cap` databases (2 descriptors each) beside the
    // 256 kept back for everything else, so a quarter of the limit is still free.
    let (_, text) = admin_get(shard.admin, "/metrics").await;
    let open = metric(&text, "stead_objects_open ") as usize;
    assert!(open <= cap, "{open} databases open, over the cap of {cap}");
    let used = open_descriptors(shard.sidecar_pid());
    assert!(
        used <= 2 * cap + 256,
        "{used} descriptors open: storage took more than its share of {NOFILE}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_leaves_descriptors_for_storage_and_health() {
    const NOFILE: u64 = 1024;
    const MAX_OPEN: usize = 32;
    let max_open = MAX_OPEN.to_string();
    let shard = LimitedShard::start(
        NOFILE,
        &["--max-open-objects", &max_open, "--header-timeout", "5m"],
    )
    .await;
    // A client that got in before the flood keeps its connection.
    let mut early = TcpStream::connect(("127.0.0.1", shard.ingress))
        .await
        .unwrap();
    let (status, _) = request_on(&mut early, "POST", "/objects/Counter/name/first/increment").await;
    assert_eq!(status, 200);

    // Idle connections until no more get in: without a bound the sidecar would accept more
    // than it has descriptors; with it, the bound plus the kernel's backlog connect.
    let mut flood = vec![];
    for _ in 0..(NOFILE as usize + 100) {
        match tokio::time::timeout(
            Duration::from_secs(2),
            TcpStream::connect(("127.0.0.1", shard.ingress)),
        )
        .await
        {
            Ok(Ok(s)) => flood.push(s),
            _ => break,
        }
    }

    // Health answers, and new objects (more than the open-database cap, so databases are
    // opened and closed) are written on the connection that was already in.
    let (status, body) = admin_get(shard.admin, "/healthz").await;
    assert_eq!((status, body.trim()), (200, "ok"));
    for i in 0..(MAX_OPEN + 8) {
        let (status, body) = request_on(
            &mut early,
            "POST",
            &format!("/objects/Counter/name/new{i}/increment"),
        )
        .await;
        assert_eq!((status, body.trim()), (200, "1"), "object new{i}");
    }

    // The ingress holds exactly its bound; the rest of the flood waits in the backlog.
    let (status, text) = admin_get(shard.admin, "/metrics").await;
    assert_eq!(status, 200);
    let bound = metric(&text, "stead_connections_max{port=\"ingress\"}") as usize;
    assert!(bound < flood.len());
    eventually("the ingress fills up to its bound", || async {
        let (_, text) = admin_get(shard.admin, "/metrics").await;
        metric(&text, "stead_connections_open{port=\"ingress\"}") as usize == bound
    })
    .await;
    let (_, text) = admin_get(shard.admin, "/metrics").await;
    assert!(metric(&text, "stead_connections_deferred_total{port=\"ingress\"}") >= 1.0);

    // Descriptors, read in /proc: the storage reserve is still free.
    let used = open_descriptors(shard.sidecar_pid());
    assert!(
        used + 2 * MAX_OPEN <= NOFILE as usize,
        "{used} descriptors open, the storage reserve is gone"
    );
    drop(flood);
}

#[tokio::test]
async fn in_flight_requests_finish_when_the_sidecar_stops() {
    let mut shard = Shard::start(&[]).await;
    // An idle keep-alive connection must not hold the stop up.
    let mut idle = TcpStream::connect(("127.0.0.1", shard.ingress))
        .await
        .unwrap();
    let (status, _) = request_on(&mut idle, "POST", "/objects/Counter/name/other/increment").await;
    assert_eq!(status, 200);
    let mut busy = TcpStream::connect(("127.0.0.1", shard.ingress))
        .await
        .unwrap();
    busy.write_all(
        b"POST /objects/Counter/name/slow/sleep?ms=1500 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    )
    .await
    .unwrap();
    // The slow object's turn has begun (its database is open) when the stop comes.
    eventually("the slow turn started", || async {
        shard.metric("stead_objects_opened_total").await >= 2.0
    })
    .await;
    shard.stop_sidecar();
    let got = read_until_closed(&mut busy).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.ends_with("\r\n\r\n1") || text.ends_with("1\n"),
        "{text}"
    );
    assert!(read_until_closed(&mut idle).await.is_empty());
    assert!(shard.wait_sidecar_exit().success());
}
