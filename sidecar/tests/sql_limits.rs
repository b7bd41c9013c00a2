//! The app's SQL under the sidecar's bounds, through a real sidecar and an app the test writes:
//! a statement that never ends is interrupted at the turn timeout (and the storage thread it
//! held serves other objects again), and a result over the limit is refused with a JSON 413
//! without the sidecar ever holding it (its peak memory is read from /proc).

mod support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use support::{call_in_turn, with_proxy_app};

const ENDLESS: &str =
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn endless_sql_is_interrupted_at_the_turn_timeout_and_other_objects_keep_working() {
    // One storage thread: the endless statement and the bystander share it.
    let (shard, _app) = with_proxy_app(&["--turn-timeout", "2s", "--storage-threads", "1"]).await;
    call_in_turn(
        &shard,
        "slow",
        "/v1/kv/put",
        json!({"key": "n", "value": b64(b"1")}),
    )
    .await;

    let started = Instant::now();
    let calls = json!([
        {"path": "/v1/kv/put", "body": {"key": "n", "value": b64(b"2")}},
        {"path": "/v1/sql/exec", "body": {"sql": ENDLESS}},
    ])
    .to_string();
    let slow = shard.send("POST", "/objects/Counter/name/slow/calls", &calls);
    let bystander = async {
        // Let the endless statement start first.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (s, _) = call_in_turn(
            &shard,
            "bystander",
            "/v1/kv/put",
            json!({"key": "k", "value": b64(b"v")}),
        )
        .await;
        (s, started.elapsed())
    };
    let ((status, body), (bystander_status, bystander_after)) =
        tokio::time::timeout(Duration::from_secs(60), async {
            tokio::join!(slow, bystander)
        })
        .await
        .expect("a turn never ended: the storage thread is stuck");
    assert_eq!(status, 504, "{body}");
    let code = serde_json::from_str::<Value>(&body).unwrap()["error"]["code"].clone();
    assert_eq!(code, json!("turn_timeout"), "{body}");
    assert_eq!(bystander_status, 200);
    eprintln!("the bystander's turn ended {bystander_after:?} after the endless statement began");

    // The interrupted turn rolled back: its write before the statement is gone.
    let (_, got) = call_in_turn(&shard, "slow", "/v1/kv/get", json!({"key": "n"})).await;
    assert_eq!(got["value"], json!(b64(b"1")));
}

/// Peak resident memory of a process, from /proc.
fn peak_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[tokio::test]
async fn a_huge_sql_result_is_refused_with_413_writes_nothing_and_is_never_built() {
    let (shard, _app) = with_proxy_app(&[]).await;
    let pid = shard.sidecar_pid();
    call_in_turn(
        &shard,
        "sql",
        "/v1/sql/exec",
        json!({"sql": "CREATE TABLE t(x)"}),
    )
    .await;

    for sql in [
        "INSERT INTO t VALUES (1); SELECT zeroblob(200000000)",
        "INSERT INTO t VALUES (2); WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 5000000) SELECT x, randomblob(64) FROM c",
    ] {
        let (status, body) = call_in_turn(&shard, "sql", "/v1/sql/exec", json!({"sql": sql})).await;
        assert_eq!(status, 413, "{sql}: {body}");
        assert_eq!(
            body["error"]["code"],
            json!("sql_result_too_large"),
            "{body}"
        );
    }
    let (_, out) = call_in_turn(
        &shard,
        "sql",
        "/v1/sql/exec",
        json!({"sql": "SELECT count(*) FROM t"}),
    )
    .await;
    assert_eq!(out["rows"], json!([[0]]), "a refused call wrote");

    let peak = peak_rss_bytes(pid);
    eprintln!(
        "sidecar peak RSS after the refused results: {} MiB",
        peak >> 20
    );
    // The default limit is 32 MiB; a sidecar that built the 200 MB value would peak far above.
    assert!(peak < 160 << 20, "sidecar peak RSS {peak} bytes");
}
