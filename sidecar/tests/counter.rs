//! The counter example through a real sidecar: turns, atomicity, the output gate, durability,
//! hibernation and routing errors. Real processes, loopback HTTP, SQLite files on disk.

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use support::{Shard, eventually};

/// `clients` tasks each send `per_client` increments to objects chosen round-robin; returns
/// every value each object answered.
async fn hammer(
    shard: &Arc<Shard>,
    clients: usize,
    per_client: usize,
    objects: usize,
) -> HashMap<String, Vec<u64>> {
    let mut tasks = vec![];
    for c in 0..clients {
        let shard = shard.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = vec![];
            for i in 0..per_client {
                let name = format!("obj{}", (c + i) % objects);
                let (status, body) = shard
                    .send(
                        "POST",
                        &format!("/objects/Counter/name/{name}/increment"),
                        "",
                    )
                    .await;
                assert_eq!(status, 200, "{body}");
                seen.push((name, body.trim().parse::<u64>().expect("decimal body")));
            }
            seen
        }));
    }
    let mut by_object: HashMap<String, Vec<u64>> = HashMap::new();
    for t in tasks {
        for (name, v) in t.await.unwrap() {
            by_object.entry(name).or_default().push(v);
        }
    }
    by_object
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_increments_on_one_object_are_exact() {
    increments_on_one_object_are_exact(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_increments_on_one_object_are_exact_with_volume_sync() {
    increments_on_one_object_are_exact(&["--sync", "volume"]).await;
}

async fn increments_on_one_object_are_exact(args: &[&str]) {
    let shard = Arc::new(Shard::start(args).await);
    let seen = hammer(&shard, 32, 100, 1).await;
    let mut values = seen["obj0"].clone();
    values.sort_unstable();
    assert_eq!(values, (1..=3200).collect::<Vec<u64>>());
    let (_, v) = shard
        .send("GET", "/objects/Counter/name/obj0/value", "")
        .await;
    assert_eq!(v.trim(), "3200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_increments_over_fifty_objects_are_exact() {
    let shard = Arc::new(Shard::start(&[]).await);
    let seen = hammer(&shard, 32, 100, 50).await;
    assert_eq!(seen.len(), 50);
    for (name, mut values) in seen {
        values.sort_unstable();
        let n = values.len() as u64;
        assert_eq!(values, (1..=n).collect::<Vec<u64>>(), "{name}");
        let (_, v) = shard
            .send("GET", &format!("/objects/Counter/name/{name}/value"), "")
            .await;
        assert_eq!(v.trim(), n.to_string(), "{name}");
    }
    assert_eq!(shard.database_files().len(), 50);
}

#[tokio::test]
async fn a_failed_turn_rolls_back() {
    let shard = Shard::start(&[]).await;
    let (s, _) = shard
        .send("POST", "/objects/Counter/name/f/increment", "")
        .await;
    assert_eq!(s, 200);
    let (s, _) = shard
        .send("POST", "/objects/Counter/name/f/increment?fail=1", "")
        .await;
    assert_eq!(s, 500);
    let (_, v) = shard.send("GET", "/objects/Counter/name/f/value", "").await;
    assert_eq!(v.trim(), "1");
    let (_, v) = shard
        .send("POST", "/objects/Counter/name/f/increment", "")
        .await;
    assert_eq!(
        v.trim(),
        "2",
        "the instance was rebuilt from storage after the rollback"
    );
}

#[tokio::test]
async fn sql_counter_counts_and_rolls_back_with_the_turn() {
    let shard = Shard::start(&[]).await;
    for want in 1..=3 {
        let (s, v) = shard
            .send("POST", "/objects/Counter/name/s/sql-increment", "")
            .await;
        assert_eq!((s, v.trim()), (200, want.to_string().as_str()));
    }
}

#[tokio::test]
async fn a_turn_past_its_timeout_answers_504_and_changes_nothing() {
    let shard = Shard::start(&["--turn-timeout", "1s"]).await;
    let (s, _) = shard
        .send("POST", "/objects/Counter/name/t/increment", "")
        .await;
    assert_eq!(s, 200);
    let (s, body) = shard
        .send("POST", "/objects/Counter/name/t/sleep?ms=3000", "")
        .await;
    assert_eq!(s, 504, "{body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"]["code"], "turn_timeout");
    // The app wakes after the timeout and tries to write with the finished turn's token.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let (_, v) = shard.send("GET", "/objects/Counter/name/t/value", "").await;
    assert_eq!(
        v.trim(),
        "1",
        "the timed-out turn's late write must not land"
    );
    assert!(shard.metric("stead_turns_timed_out_total").await >= 1.0);
}

#[tokio::test]
async fn a_late_call_with_a_finished_turns_token_gets_410() {
    let shard = Shard::start(&[]).await;
    let (s, _) = shard
        .send("POST", "/objects/Counter/name/late/late-call", "")
        .await;
    assert_eq!(s, 200);
    eventually("the app made its late call", || async {
        let (s, v) = shard.send("GET", "/late-call-result", "").await;
        s == 200 && !v.trim().is_empty() && v.trim() != "pending"
    })
    .await;
    let (_, v) = shard.send("GET", "/late-call-result", "").await;
    assert_eq!(v.trim(), "410");
}

#[tokio::test]
async fn no_answer_is_released_before_its_commit() {
    // The hook aborts the sidecar at the first commit, after waiting 300 ms. If answers left
    // before commits, the client would hold a 200 for a write that never reached the disk.
    let mut shard = Shard::start(&["--test-abort-at-commit"]).await;
    let result = shard
        .send_with(
            "POST",
            &shard.url("/objects/Counter/name/gate/increment"),
            &[],
            "",
        )
        .await;
    assert!(
        result.is_err(),
        "an answer left before its commit: {result:?}"
    );
    let status = shard.wait_sidecar_exit();
    assert!(!status.success());
    shard.extra_args.clear();
    shard.start_sidecar().await;
    let (_, v) = shard
        .send("GET", "/objects/Counter/name/gate/value", "")
        .await;
    assert_eq!(v.trim(), "0", "the uncommitted write is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_increments_survive_kill_9() {
    acknowledged_increments_survive_kill_9_with(&["--durability", "strict"]).await;
}

/// The same with `--sync volume`: commits are not fsynced one by one, and their answers wait for
/// the volume's sync. (A kill -9 keeps the page cache; what this proves is that the answers and
/// the files are right: values exact, new databases created without fsyncs reopen.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_increments_survive_kill_9_with_volume_sync() {
    acknowledged_increments_survive_kill_9_with(&["--durability", "strict", "--sync", "volume"])
        .await;
}

async fn acknowledged_increments_survive_kill_9_with(args: &[&str]) {
    let mut shard = Shard::start(args).await;
    let acked = Arc::new(std::sync::Mutex::new(HashMap::<usize, u64>::new()));
    let client = Arc::new(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<http_body_util::Full<bytes::Bytes>>(),
    );
    let mut tasks = vec![];
    for c in 0..16usize {
        let url = shard.url(&format!("/objects/Counter/name/k{}/increment", c % 4));
        let acked = acked.clone();
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let req = http::Request::post(&url)
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap();
                let Ok(resp) = client.request(req).await else {
                    return;
                };
                if resp.status() != 200 {
                    return;
                }
                let Ok(body) = http_body_util::BodyExt::collect(resp.into_body()).await else {
                    return;
                };
                let v: u64 = String::from_utf8_lossy(&body.to_bytes())
                    .trim()
                    .parse()
                    .unwrap();
                let mut a = acked.lock().unwrap();
                let e = a.entry(c % 4).or_default();
                *e = (*e).max(v);
            }
        }));
    }
    eventually("some increments acknowledged", || async {
        acked.lock().unwrap().values().sum::<u64>() > 200
    })
    .await;
    shard.kill_sidecar();
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().unwrap().clone();
    shard.start_sidecar().await;
    for (k, max_acked) in acked {
        let (_, v) = shard
            .send("GET", &format!("/objects/Counter/name/k{k}/value"), "")
            .await;
        let v: u64 = v.trim().parse().unwrap();
        assert!(
            v >= max_acked,
            "k{k}: value {v} after restart, but {max_acked} was acknowledged"
        );
    }
}

#[tokio::test]
async fn forged_stead_headers_never_reach_the_app() {
    let shard = Shard::start(&[]).await;
    let forged = "0".repeat(64);
    let (s, body) = shard
        .send_with(
            "GET",
            &shard.url("/objects/Counter/name/me/whoami"),
            &[
                ("stead-object-id", &forged),
                ("stead-turn", "1.x"),
                ("stead-class", "Other"),
            ],
            "",
        )
        .await
        .unwrap();
    assert_eq!(s, 200);
    let who: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(who["class"], "Counter");
    assert_eq!(who["name"], "me");
    assert_ne!(who["id"], forged);
    // The id is the named id of the design, and addressing by it reaches the same object.
    let id = who["id"].as_str().unwrap().to_owned();
    let (_, by_id) = shard
        .send("GET", &format!("/objects/Counter/id/{id}/whoami"), "")
        .await;
    let by_id: Value = serde_json::from_str(&by_id).unwrap();
    assert_eq!(by_id["id"], id.as_str());
    assert_eq!(by_id["name"], Value::Null);
}

#[tokio::test]
async fn bad_routes_get_json_errors() {
    let shard = Shard::start(&[]).await;
    let long_name = "n".repeat(513);
    let cases = [
        (
            "GET",
            "/objects/Nope/name/a/value".to_owned(),
            404,
            "unknown_class",
        ),
        (
            "GET",
            "/objects/Counter/id/abc/value".to_owned(),
            400,
            "invalid_id",
        ),
        (
            "GET",
            format!("/objects/Counter/id/{}/value", "G".repeat(64)),
            400,
            "invalid_id",
        ),
        (
            "GET",
            format!("/objects/Counter/name/{long_name}/value"),
            400,
            "invalid_name",
        ),
        (
            "GET",
            "/objects/Counter/new-id".to_owned(),
            405,
            "method_not_allowed",
        ),
    ];
    for (method, path, status, code) in cases {
        let (s, body) = shard.send(method, &path, "").await;
        assert_eq!(s, status, "{path}: {body}");
        let v: Value =
            serde_json::from_str(&body).unwrap_or_else(|_| panic!("{path}: not JSON: {body}"));
        assert_eq!(v["error"]["code"], code, "{path}");
    }
    let (s, body) = shard.send("POST", "/objects/Counter/new-id", "").await;
    assert_eq!(s, 200);
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(id.len(), 64);
    let (s, v) = shard
        .send("POST", &format!("/objects/Counter/id/{id}/increment"), "")
        .await;
    assert_eq!((s, v.trim()), (200, "1"));
    assert!(
        shard.database_files().len() == 1,
        "only the incremented object has a database"
    );
}

#[tokio::test]
async fn idle_objects_close_and_reopen_transparently() {
    let shard = Shard::start(&["--idle-timeout", "500ms"]).await;
    for _ in 0..3 {
        shard
            .send("POST", "/objects/Counter/name/sleepy/increment", "")
            .await;
    }
    assert_eq!(shard.metric("stead_objects_open ").await, 1.0);
    eventually("the idle object is closed", || async {
        shard.metric("stead_objects_open ").await == 0.0
    })
    .await;
    assert!(shard.metric("stead_objects_hibernated_total").await >= 1.0);
    let (s, v) = shard
        .send("POST", "/objects/Counter/name/sleepy/increment", "")
        .await;
    assert_eq!((s, v.trim()), (200, "4"));
    assert_eq!(shard.metric("stead_objects_open ").await, 1.0);
}

#[tokio::test]
async fn reading_a_never_written_object_creates_nothing() {
    let shard = Shard::start(&[]).await;
    let (s, v) = shard
        .send("GET", "/objects/Counter/name/ghost/value", "")
        .await;
    assert_eq!((s, v.trim()), (200, "0"));
    assert!(shard.database_files().is_empty());
}

#[tokio::test]
async fn a_second_sidecar_on_the_same_data_folder_is_refused_before_it_touches_it() {
    let shard = Shard::start(&[]).await;
    let (s, _) = shard
        .send("POST", "/objects/Counter/name/locked/increment", "")
        .await;
    assert_eq!(s, 200);
    let port = || support::free_port().to_string();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_stead"))
        .arg("sidecar")
        .args(["--ingress", &format!("127.0.0.1:{}", port())])
        .args(["--api", &format!("127.0.0.1:{}", port())])
        .args(["--admin", &format!("127.0.0.1:{}", port())])
        .args(["--app", &format!("127.0.0.1:{}", port())])
        .arg("--data-dir")
        .arg(&shard.data_dir)
        .args(["--classes", "Counter"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), out)
        .await
        .expect("the second sidecar exits")
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("another sidecar uses this data folder"),
        "{said}"
    );
    // The first one serves on, with its object.
    let (s, body) = shard
        .send("POST", "/objects/Counter/name/locked/increment", "")
        .await;
    assert_eq!((s, body.trim()), (200, "2"));
}
