//! The app API through a real sidecar process, driven by an app the test writes itself.

mod support;

use base64::Engine as _;
use serde_json::{Value, json};
use support::{Shard, call_in_turn, with_proxy_app};

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

async fn all_keys(shard: &Shard, name: &str) -> Vec<String> {
    let (status, body) = call_in_turn(shard, name, "/v1/kv/list", json!({})).await;
    assert_eq!(status, 200, "{body}");
    body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn kv_calls_round_trip_within_and_across_turns() {
    let (shard, _app) = with_proxy_app(&[]).await;
    let (s, b) = call_in_turn(
        &shard,
        "kv",
        "/v1/kv/put",
        json!({"key": "a", "value": b64(b"1")}),
    )
    .await;
    assert_eq!((s, b["written"].clone()), (200, json!(1)));
    let entries: Vec<Value> = (0..5)
        .map(|i| json!({"key": format!("p/{i}"), "value": b64(format!("{i}").as_bytes())}))
        .collect();
    let (s, b) = call_in_turn(&shard, "kv", "/v1/kv/put", json!({"entries": entries})).await;
    assert_eq!((s, b["written"].clone()), (200, json!(5)));

    let (_, b) = call_in_turn(&shard, "kv", "/v1/kv/get", json!({"key": "a"})).await;
    assert_eq!(b["value"], json!(b64(b"1")));
    let (_, b) = call_in_turn(&shard, "kv", "/v1/kv/get", json!({"key": "missing"})).await;
    assert_eq!(b["value"], Value::Null);
    let (_, b) = call_in_turn(
        &shard,
        "kv",
        "/v1/kv/get",
        json!({"keys": ["p/3", "nope", "a"]}),
    )
    .await;
    let keys: Vec<&str> = b["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["p/3", "a"]);

    let (_, b) = call_in_turn(
        &shard,
        "kv",
        "/v1/kv/list",
        json!({"prefix": "p/", "limit": 2, "reverse": true}),
    )
    .await;
    let keys: Vec<&str> = b["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["p/4", "p/3"]);

    let (_, b) = call_in_turn(
        &shard,
        "kv",
        "/v1/kv/delete",
        json!({"keys": ["p/0", "p/1", "zz"]}),
    )
    .await;
    assert_eq!(b["deleted"], json!(2));
    let (_, b) = call_in_turn(&shard, "kv", "/v1/kv/delete-all", json!({})).await;
    assert_eq!(b["deleted"], json!(4));
    assert!(all_keys(&shard, "kv").await.is_empty());
}

#[tokio::test]
async fn sql_exec_returns_columns_rows_and_counts() {
    let (shard, _app) = with_proxy_app(&[]).await;
    let (s, b) = call_in_turn(
        &shard,
        "sql",
        "/v1/sql/exec",
        json!({"sql": "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT, b BLOB); INSERT INTO t VALUES (1, 'one', x'01'), (2, 'two', NULL)"}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["rows_written"], json!(2));
    let (s, b) = call_in_turn(
        &shard,
        "sql",
        "/v1/sql/exec",
        json!({"sql": "SELECT k, v, b FROM t WHERE k >= ? ORDER BY k", "params": [1]}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["columns"], json!(["k", "v", "b"]));
    assert_eq!(
        b["rows"],
        json!([[1, "one", {"base64": "AQ=="}], [2, "two", null]])
    );
    assert!(b["rows_read"].as_u64().unwrap() >= 2);
    let (s, b) = call_in_turn(
        &shard,
        "sql",
        "/v1/sql/exec",
        json!({"sql": "UPDATE t SET b = ? WHERE k = ?", "params": [{"base64": "AgM="}, 2]}),
    )
    .await;
    assert_eq!((s, b["rows_written"].clone()), (200, json!(1)));
}

#[tokio::test]
async fn every_limit_and_malformed_call_is_refused_with_a_json_error_and_writes_nothing() {
    let (shard, _app) = with_proxy_app(&[]).await;
    let big_key = "k".repeat(2049);
    let big_value = b64(&vec![7u8; (2 << 20) + 1]);
    let batch: Vec<Value> = (0..129)
        .map(|i| json!({"key": format!("b{i}"), "value": b64(b"x")}))
        .collect();
    let long_sql = format!("INSERT INTO t VALUES ('{}')", "x".repeat(100 << 10));
    let many_params: Vec<Value> = (0..101).map(|i| json!(i)).collect();
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "/v1/kv/put",
            json!({"key": big_key, "value": b64(b"v")}),
            413,
            "key_too_large",
        ),
        (
            "/v1/kv/put",
            json!({"key": "v", "value": big_value}),
            413,
            "value_too_large",
        ),
        (
            "/v1/kv/put",
            json!({"entries": batch}),
            400,
            "batch_too_large",
        ),
        (
            "/v1/kv/get",
            json!({"keys": (0..129).map(|i| i.to_string()).collect::<Vec<_>>()}),
            400,
            "batch_too_large",
        ),
        (
            "/v1/kv/put",
            json!({"key": "x", "value": "not base64!"}),
            400,
            "bad_request",
        ),
        ("/v1/kv/put", json!({"key": "x"}), 400, "bad_request"),
        (
            "/v1/sql/exec",
            json!({"sql": long_sql}),
            413,
            "statement_too_large",
        ),
        (
            "/v1/sql/exec",
            json!({"sql": "SELECT 1", "params": many_params}),
            400,
            "too_many_params",
        ),
        (
            "/v1/sql/exec",
            json!({"sql": "CREATE TABLE _stead_evil(x)"}),
            403,
            "reserved_name",
        ),
        (
            "/v1/sql/exec",
            json!({"sql": "DELETE FROM _STEAD_KV"}),
            403,
            "reserved_name",
        ),
        (
            "/v1/sql/exec",
            json!({"sql": "CREATE TABLE t(x); COMMIT"}),
            403,
            "not_allowed",
        ),
        (
            "/v1/sql/exec",
            json!({"sql": "PRAGMA synchronous = OFF"}),
            403,
            "not_allowed",
        ),
        (
            "/v1/sql/exec",
            json!({"sql": "CREATE TABLE t(x); INSERT INTO nowhere VALUES (1)"}),
            400,
            "sql_error",
        ),
        (
            "/v1/sql/exec",
            json!({"sql": "INSERT INTO t VALUES (?)", "params": [[1, 2]]}),
            400,
            "bad_request",
        ),
        ("/v1/kv/nope", json!({}), 404, "not_found"),
    ];
    for (path, body, status, code) in cases {
        let (s, b) = call_in_turn(&shard, "limits", path, body).await;
        assert_eq!(s, status, "{path}: {b}");
        assert_eq!(b["error"]["code"], json!(code), "{path}: {b}");
        assert!(
            b["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    // Malformed JSON, sent raw.
    let (status, text) = shard
        .send(
            "POST",
            "/objects/Counter/name/limits/call",
            &json!({"path": "/v1/kv/put", "body": "{not json", "raw": true}).to_string(),
        )
        .await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["status"], json!(400));
    assert_eq!(v["body"]["error"]["code"], json!("invalid_json"));

    // Nothing was written by any of them. Reading creates nothing, so no database exists.
    assert!(all_keys(&shard, "limits").await.is_empty());
    assert!(
        shard.database_files().is_empty(),
        "{:?}",
        shard.database_files()
    );
    let (s, b) = call_in_turn(
        &shard,
        "limits",
        "/v1/sql/exec",
        json!({"sql": "SELECT name FROM sqlite_master WHERE name = 't'"}),
    )
    .await;
    assert_eq!((s, b["rows"].clone()), (200, json!([])));
    assert!(shard.database_files().is_empty());
}

#[tokio::test]
async fn sql_on_a_missing_table_of_a_new_object_fails_and_creates_nothing() {
    let (shard, _app) = with_proxy_app(&[]).await;
    let (s, b) = call_in_turn(
        &shard,
        "empty-room",
        "/v1/sql/exec",
        json!({"sql": "SELECT seq FROM messages ORDER BY seq DESC LIMIT 100"}),
    )
    .await;
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("sql_error")));
    assert!(
        shard.database_files().is_empty(),
        "{:?}",
        shard.database_files()
    );
}

#[tokio::test]
async fn a_batch_that_fails_midway_writes_nothing() {
    let (shard, _app) = with_proxy_app(&[]).await;
    let entries = vec![
        json!({"key": "ok1", "value": b64(b"1")}),
        json!({"key": "k".repeat(3000), "value": b64(b"2")}),
    ];
    let (s, _) = call_in_turn(&shard, "batch", "/v1/kv/put", json!({"entries": entries})).await;
    assert_eq!(s, 413);
    assert!(all_keys(&shard, "batch").await.is_empty());
}

#[tokio::test]
async fn a_rolled_back_turn_leaves_no_trace() {
    let (shard, _app) = with_proxy_app(&[]).await;
    let (status, _) = shard
        .send(
            "POST",
            "/objects/Counter/name/rb/call?rollback=1",
            &json!({"path": "/v1/kv/put", "body": {"key": "x", "value": b64(b"1")}}).to_string(),
        )
        .await;
    assert_eq!(status, 500);
    assert!(
        shard.database_files().is_empty(),
        "the creating turn rolled back"
    );
    assert!(all_keys(&shard, "rb").await.is_empty());
}

#[tokio::test]
async fn a_turn_token_reaches_only_its_own_object() {
    let (shard, app) = with_proxy_app(&[]).await;
    // Object A's turn stays open while B's turn runs; A's token writes, B reads.
    let a = {
        let url = "/objects/Counter/name/A/hold?ms=1500";
        let s = &shard;
        async move { s.send("POST", url, "").await }
    };
    let b = async {
        support::eventually("A's turn is running", || async {
            app.last_event("/hold").contains_key("stead-turn")
        })
        .await;
        let token_a = app.last_event("/hold")["stead-turn"].clone();
        let (s, body) = app
            .api_call(
                Some(&token_a),
                "/v1/kv/put",
                &json!({"key": "mine", "value": b64(b"A")}).to_string(),
            )
            .await;
        assert_eq!(s, 200, "{body}");
        call_in_turn(&shard, "B", "/v1/kv/get", json!({"key": "mine"})).await
    };
    let (a_result, (s, b_view)) = tokio::join!(a, b);
    assert_eq!(a_result.0, 200);
    assert_eq!(s, 200);
    assert_eq!(b_view["value"], Value::Null, "B must not see A's write");
    let (_, a_view) = call_in_turn(&shard, "A", "/v1/kv/get", json!({"key": "mine"})).await;
    assert_eq!(
        a_view["value"],
        json!(b64(b"A")),
        "A's write committed with A's turn"
    );
}

#[tokio::test]
async fn tokens_are_checked_missing_unknown_finished_and_stateless() {
    let (shard, app) = with_proxy_app(&[]).await;
    let put = json!({"key": "x", "value": b64(b"1")}).to_string();
    let (s, b) = app.api_call(None, "/v1/kv/put", &put).await;
    assert_eq!(
        (s, b["error"]["code"].clone()),
        (401, json!("missing_turn"))
    );
    let (s, b) = app.api_call(Some("ffffff.0123"), "/v1/kv/put", &put).await;
    assert_eq!(
        (s, b["error"]["code"].clone()),
        (401, json!("unknown_turn"))
    );

    // A late call with a finished turn's token.
    let (status, _) = shard
        .send("POST", "/objects/Counter/name/late/anything", "")
        .await;
    assert_eq!(status, 200);
    let token = app.last_event("/anything")["stead-turn"].clone();
    let (s, b) = app.api_call(Some(&token), "/v1/kv/put", &put).await;
    assert_eq!(
        (s, b["error"]["code"].clone()),
        (410, json!("turn_finished"))
    );
    assert!(shard.database_files().is_empty());

    // A stateless request's token has no storage.
    let app2 = app.clone();
    let (status, _) = shard.send("GET", "/front-door", "").await;
    assert_eq!(status, 200);
    let ev = app2.last_event("/front-door");
    assert_eq!(ev.get("stead-event").map(String::as_str), Some("request"));
    assert!(!ev.contains_key("stead-object-id"));
}

#[tokio::test]
async fn client_stead_headers_never_reach_the_app() {
    let (shard, app) = with_proxy_app(&[]).await;
    let forged_id = "0".repeat(64);
    let (status, _) = shard
        .send_with(
            "GET",
            &shard.url("/objects/Counter/name/real/peek"),
            &[
                ("stead-object-id", &forged_id),
                ("Stead-Turn", "1.forged"),
                ("stead-class", "Evil"),
                ("stead-rollback", "1"),
                ("x-kept", "yes"),
            ],
            "",
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let ev = app.last_event("/peek");
    assert_ne!(ev["stead-object-id"], forged_id);
    assert_eq!(ev["stead-class"], "Counter");
    assert_eq!(ev["stead-object-name"], "real");
    assert_ne!(ev["stead-turn"], "1.forged");
    assert!(!ev.contains_key("stead-rollback"));
    assert_eq!(ev["x-kept"], "yes");
    // Stateless requests too.
    let (status, _) = shard
        .send_with(
            "GET",
            &shard.url("/free"),
            &[("stead-object-id", &forged_id)],
            "",
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(!app.last_event("/free").contains_key("stead-object-id"));
}
