//! A stopping shard keeps serving for its shutdown delay, not ready, so that a Service moves
//! traffic away before the ports close (issue 11: `ECONNREFUSED` through a ClusterIP while a
//! shard pod stopped). A real sidecar and counter app as child processes, stopped with SIGTERM.

mod support;

use std::time::Duration;

use support::{Shard, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One raw HTTP/1.1 request on `stream`: the answer's status, head and body.
async fn request_on(stream: &mut TcpStream, path: &str) -> (u16, String, String) {
    let req = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
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
                return (status, head.to_ascii_lowercase(), body[..len].to_owned());
            }
        }
    }
}

/// Whether the server closed `stream` (EOF or reset) within 30 s.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

async fn readyz(shard: &Shard) -> (u16, String) {
    let url = format!("http://127.0.0.1:{}/readyz", shard.admin);
    shard
        .send_with("GET", &url, &[], "")
        .await
        .expect("the admin port answers")
}

async fn ready(shard: &Shard) {
    eventually("the shard is ready", || async {
        readyz(shard).await.0 == 200
    })
    .await;
}

async fn exits(shard: &mut Shard) -> std::process::ExitStatus {
    let mut status = None;
    for _ in 0..300 {
        status = shard.sidecar_exited();
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    status.expect("the sidecar did not exit within 30 s")
}

#[tokio::test]
async fn a_stopping_shard_is_not_ready_but_serves_old_and_new_connections_until_a_second_signal() {
    // A delay far longer than the test: only the second signal can end it.
    let mut shard = Shard::start(&["--shutdown-delay", "1h"]).await;
    ready(&shard).await;
    let mut kept = TcpStream::connect(("127.0.0.1", shard.ingress))
        .await
        .unwrap();
    let (status, head, body) = request_on(&mut kept, "/objects/Counter/name/d/increment").await;
    assert_eq!((status, body.trim()), (200, "1"));
    assert!(!head.contains("connection: close"), "{head}");

    shard.stop_sidecar();
    eventually("/readyz turns 503 on the stop signal", || async {
        readyz(&shard).await.0 == 503
    })
    .await;
    let (_, why) = readyz(&shard).await;
    assert!(why.contains("draining"), "{why}");

    // A connection opened before the signal is served, then closed so the client reconnects
    // through the Service.
    let (status, head, body) = request_on(&mut kept, "/objects/Counter/name/d/increment").await;
    assert_eq!((status, body.trim()), (200, "2"));
    assert!(head.contains("connection: close"), "{head}");
    assert!(closed_by_server(&mut kept).await);
    // A connection the Service still routes here during the delay is accepted and served.
    let mut late = TcpStream::connect(("127.0.0.1", shard.ingress))
        .await
        .expect("the ingress still accepts during the shutdown delay");
    let (status, head, body) = request_on(&mut late, "/objects/Counter/name/d/increment").await;
    assert_eq!((status, body.trim()), (200, "3"));
    assert!(head.contains("connection: close"), "{head}");
    assert!(
        shard.sidecar_exited().is_none(),
        "the sidecar stopped during its delay"
    );

    shard.stop_sidecar();
    let status = exits(&mut shard).await;
    assert!(status.success(), "{status:?}");
    assert!(
        TcpStream::connect(("127.0.0.1", shard.ingress))
            .await
            .is_err(),
        "the ingress still listens after the sidecar exited"
    );
}

#[tokio::test]
async fn a_stopping_shard_exits_by_itself_when_its_shutdown_delay_ends() {
    let mut shard = Shard::start(&["--shutdown-delay", "1s"]).await;
    ready(&shard).await;
    let (status, body) = shard
        .send("POST", "/objects/Counter/name/e/increment", "")
        .await;
    assert_eq!((status, body.trim()), (200, "1"));
    shard.stop_sidecar();
    let status = exits(&mut shard).await;
    assert!(status.success(), "{status:?}");
}
