//! Alarms through a real sidecar, driven by an app the test writes itself.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use support::proxy_app::ProxyApp;
use support::{Shard, eventually, with_proxy_app};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Makes one app API call inside a turn of `name`; `rollback` makes the turn fail.
async fn in_turn(shard: &Shard, name: &str, path: &str, body: Value, rollback: bool) -> Value {
    let q = if rollback { "?rollback=1" } else { "" };
    let (status, text) = shard
        .send(
            "POST",
            &format!("/objects/Counter/name/{name}/call{q}"),
            &json!({"path": path, "body": body}).to_string(),
        )
        .await;
    assert_eq!(status, if rollback { 500 } else { 200 }, "{text}");
    serde_json::from_str(&text).unwrap()
}

fn alarms_for(app: &ProxyApp, name: &str) -> Vec<u32> {
    app.events_of("alarm")
        .iter()
        .filter(|e| e.get("stead-object-name").map(String::as_str) == Some(name))
        .map(|e| e["stead-alarm-retry"].parse().unwrap())
        .collect()
}

#[tokio::test]
async fn an_alarm_fires_once_at_its_time_and_is_then_cleared() {
    let (shard, app) = with_proxy_app(&[]).await;
    let due = now_ms() + 300;
    let set = in_turn(
        &shard,
        "a1",
        "/v1/alarm/set",
        json!({"time_ms": due}),
        false,
    )
    .await;
    assert_eq!(set["status"], 200, "{set}");
    let got = in_turn(&shard, "a1", "/v1/alarm/get", json!({}), false).await;
    assert_eq!(got["body"]["time_ms"], due);
    eventually("the alarm fired", || async {
        !alarms_for(&app, "a1").is_empty()
    })
    .await;
    let fired_at = now_ms();
    assert!(fired_at >= due, "fired before its time");
    let lag = shard.metric("stead_alarm_lag_seconds_sum").await;
    println!("alarm delivered; lag reported by the sidecar: {lag:.3} s");
    // Success cleared it: it does not fire again, and get says so.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(alarms_for(&app, "a1"), vec![0]);
    let got = in_turn(&shard, "a1", "/v1/alarm/get", json!({}), false).await;
    assert_eq!(got["body"]["time_ms"], Value::Null);
    assert_eq!(
        shard
            .metric("stead_alarms_fired_total{result=\"success\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn an_alarm_set_in_a_rolled_back_turn_never_fires() {
    let (shard, app) = with_proxy_app(&[]).await;
    in_turn(
        &shard,
        "rb",
        "/v1/kv/put",
        json!({"key": "k", "value": "AA=="}),
        false,
    )
    .await;
    let due = now_ms() + 200;
    in_turn(&shard, "rb", "/v1/alarm/set", json!({"time_ms": due}), true).await;
    // A control alarm set later than the rolled-back one, in a committed turn: once it has
    // fired, the rolled-back one would have fired too.
    in_turn(
        &shard,
        "control",
        "/v1/alarm/set",
        json!({"time_ms": due + 300}),
        false,
    )
    .await;
    eventually("the control alarm fired", || async {
        !alarms_for(&app, "control").is_empty()
    })
    .await;
    assert!(
        alarms_for(&app, "rb").is_empty(),
        "a rolled-back alarm fired"
    );
    let got = in_turn(&shard, "rb", "/v1/alarm/get", json!({}), false).await;
    assert_eq!(got["body"]["time_ms"], Value::Null);
}

#[tokio::test]
async fn a_failing_alarm_is_retried_with_backoff_then_dropped() {
    let (shard, app) = with_proxy_app(&["--alarm-first-retry", "50ms"]).await;
    app.fail_alarms
        .store(true, std::sync::atomic::Ordering::SeqCst);
    in_turn(
        &shard,
        "f",
        "/v1/alarm/set",
        json!({"time_ms": now_ms()}),
        false,
    )
    .await;
    eventually("the alarm was dropped", || async {
        shard.metric("stead_alarms_dropped_total").await >= 1.0
    })
    .await;
    // The first attempt and six retries, each carrying its count.
    assert_eq!(alarms_for(&app, "f"), vec![0, 1, 2, 3, 4, 5, 6]);
    let got = in_turn(&shard, "f", "/v1/alarm/get", json!({}), false).await;
    assert_eq!(
        got["body"]["time_ms"],
        Value::Null,
        "a dropped alarm is deleted"
    );
    assert_eq!(shard.metric("stead_alarms_retried_total").await, 6.0);
    assert_eq!(
        shard
            .metric("stead_alarms_fired_total{result=\"failure\"}")
            .await,
        7.0
    );
    // The backoff doubled: the delivery times of the attempts spread out (checked as an order
    // of events, not a duration: retry 6 is the last event and nothing follows it).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(alarms_for(&app, "f").len(), 7);
}

#[tokio::test]
async fn an_alarm_pending_at_kill_9_fires_once_after_restart() {
    let (mut shard, app) = with_proxy_app(&[]).await;
    let due = now_ms() + 1500;
    in_turn(&shard, "k", "/v1/alarm/set", json!({"time_ms": due}), false).await;
    shard.kill_sidecar();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(
        alarms_for(&app, "k").is_empty(),
        "nothing runs while the sidecar is down"
    );
    shard.start_sidecar().await;
    eventually("the overdue alarm fired after restart", || async {
        !alarms_for(&app, "k").is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(alarms_for(&app, "k"), vec![0], "it fired exactly once");
}

#[tokio::test]
async fn a_handler_that_sets_a_new_alarm_keeps_it() {
    let (shard, _app) = with_proxy_app(&[]).await;
    // Deleting returns whether there was one.
    let d = in_turn(&shard, "d", "/v1/alarm/delete", json!({}), false).await;
    assert_eq!(d["body"]["deleted"], false);
    in_turn(
        &shard,
        "d",
        "/v1/alarm/set",
        json!({"time_ms": now_ms() + 60_000}),
        false,
    )
    .await;
    let d = in_turn(&shard, "d", "/v1/alarm/delete", json!({}), false).await;
    assert_eq!(d["body"]["deleted"], true);
    assert_eq!(shard.metric("stead_alarms_pending").await, 0.0);
}
