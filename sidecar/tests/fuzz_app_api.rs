//! Property test of the app API's request decoding through a real sidecar: arbitrary and
//! half-valid bodies sent to every app API call, inside live turns, with the limits set small so
//! that random input reaches them. Every answer is a success or a 4xx with the JSON error shape
//! (never a 5xx, never a crash, never a file path), and the object still works afterwards.
//! Bounded: a fixed number of turns of a few calls each.

mod support;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};
use support::proxy_app::ProxyApp;
use support::{Shard, free_port};

const CALLS: [&str; 16] = [
    "/v1/kv/get",
    "/v1/kv/put",
    "/v1/kv/delete",
    "/v1/kv/list",
    "/v1/kv/delete-all",
    "/v1/sql/exec",
    "/v1/alarm/set",
    "/v1/alarm/get",
    "/v1/alarm/delete",
    "/v1/websockets/list",
    "/v1/websockets/send",
    "/v1/websockets/broadcast",
    "/v1/websockets/close",
    "/v1/websockets/attachment",
    "/v1/websockets/auto-response",
    "/v1/nope",
];

const FIELDS: [&str; 20] = [
    "key",
    "keys",
    "value",
    "entries",
    "prefix",
    "start",
    "end",
    "limit",
    "reverse",
    "sql",
    "params",
    "time_ms",
    "id",
    "text",
    "binary",
    "tag",
    "except",
    "code",
    "reason",
    "attachment",
];

/// A JSON value of any shape, small.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        any::<f64>().prop_map(|f| json!(f)),
        "\\PC{0,80}".prop_map(Value::String),
        // base64-looking strings, some valid
        "[A-Za-z0-9+/=]{0,40}".prop_map(Value::String),
        // SQL-looking text (never an endless query)
        prop_oneof![
            Just("SELECT 1"),
            Just("CREATE TABLE IF NOT EXISTS t(k, v)"),
            Just("INSERT INTO t VALUES (?1, ?2)"),
            Just("SELECT * FROM t WHERE k = ?1"),
            Just("SELECT * FROM _stead_kv"),
            Just("DROP TABLE _stead_meta"),
            Just("PRAGMA journal_mode = DELETE"),
            Just("ATTACH '/tmp/x' AS x"),
            Just("COMMIT"),
            Just("SELECT 1; SELECT 2"),
            Just("SELEC nonsense ("),
        ]
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(&FIELDS[..]), inner), 0..5).prop_map(
                |kvs| Value::Object(kvs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            ),
        ]
    })
}

/// A request body: mostly objects with the API's own field names, sometimes not JSON at all.
fn body() -> impl Strategy<Value = (String, bool)> {
    prop_oneof![
        6 => prop::collection::vec((prop::sample::select(&FIELDS[..]), json_value()), 0..5)
            .prop_map(|kvs| {
                let v: serde_json::Map<String, Value> =
                    kvs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                (Value::Object(v).to_string(), true)
            }),
        2 => json_value().prop_map(|v| (v.to_string(), true)),
        1 => "\\PC{0,60}".prop_map(|s| (s, false)),
        1 => json_value().prop_map(|v| {
            let s = v.to_string();
            let half: String = s.chars().take(s.chars().count() / 2).collect();
            (half, false)
        }),
    ]
}

fn call() -> impl Strategy<Value = Value> {
    (prop::sample::select(&CALLS[..]), body())
        .prop_map(|(path, (body, _))| json!({"path": path, "body": body, "raw": true}))
}

#[test]
fn arbitrary_app_api_bodies_get_success_or_a_json_4xx() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (shard, _app) = rt.block_on(async {
        let api = free_port();
        let app = ProxyApp::start(api).await;
        let shard = Shard::start_for(
            app.port,
            api,
            &[
                "--max-key-bytes=32",
                "--max-value-bytes=64",
                "--max-batch=4",
                "--max-statement-bytes=200",
                "--max-params=3",
                "--max-database-bytes=1048576",
            ],
        )
        .await;
        (shard, app)
    });
    let data_dir = shard.data_dir.display().to_string();
    let mut runner = TestRunner::new(Config {
        cases: 120,
        failure_persistence: None,
        ..Config::default()
    });
    let seen = std::cell::RefCell::new(std::collections::BTreeMap::<u64, usize>::new());
    let result = runner.run(&prop::collection::vec(call(), 1..6), |calls| {
        let (status, text) = rt.block_on(shard.send(
            "POST",
            "/objects/Counter/name/fuzzed/calls",
            &Value::Array(calls.clone()).to_string(),
        ));
        prop_assert_eq!(status, 200, "the turn failed: {}", text);
        let outs: Vec<Value> = serde_json::from_str(&text).unwrap();
        for (call, out) in calls.iter().zip(&outs) {
            let status = out["status"].as_u64().unwrap();
            *seen.borrow_mut().entry(status).or_default() += 1;
            let body = &out["body"];
            prop_assert!(
                status == 200 || (400..500).contains(&status),
                "{} answered {}: {} (for {})",
                call["path"],
                status,
                body,
                call["body"]
            );
            prop_assert!(body.get("not_json").is_none(), "not JSON: {}", body);
            if status != 200 {
                let code = body["error"]["code"].as_str().unwrap_or("");
                let message = body["error"]["message"].as_str().unwrap_or("");
                prop_assert!(
                    !code.is_empty() && !message.is_empty(),
                    "no error shape: {}",
                    body
                );
                prop_assert!(
                    !message.contains(&data_dir),
                    "a file path leaked: {}",
                    message
                );
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // The generators reach both sides: calls that succeed and calls that are refused.
    let seen = seen.into_inner();
    println!("answers by status: {seen:?}");
    assert!(seen.get(&200).is_some_and(|n| *n > 3), "{seen:?}");
    assert!(
        seen.iter()
            .filter(|(s, _)| **s >= 400)
            .map(|(_, n)| n)
            .sum::<usize>()
            > 100,
        "{seen:?}"
    );
    // The object, and the shard, still work.
    rt.block_on(async {
        let (status, text) = shard
            .send(
                "POST",
                "/objects/Counter/name/fuzzed/call",
                &json!({"path": "/v1/kv/put", "body": {"key": "after", "value": "AQ=="}})
                    .to_string(),
            )
            .await;
        assert_eq!(status, 200, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["status"], 200, "{v}");
        let (status, _) = shard.send("GET", "/objects/Counter/name/other/x", "").await;
        assert_eq!(status, 200);
    });
}
