//! Object calls: what a stub sends to the app API's `/v1/objects/…`, and what comes back.

use std::sync::Arc;

use base64::prelude::*;
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use serde_json::{Value, json};

use super::fake_api::FakeApi;
use crate::client::ApiClient;
use crate::{Error, ObjectAddr, ObjectInfo, Response, StatelessContext, Turn};

const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

async fn turn_with(token: &'static str) -> (FakeApi, Turn) {
    let (fake, url) = FakeApi::start().await;
    let api = ApiClient::new(&url).unwrap();
    let info = Arc::new(ObjectInfo {
        class: "Counter".into(),
        id: ID.into(),
        name: Some("a".into()),
    });
    (fake, Turn::new(info, HeaderValue::from_static(token), api))
}

/// The fake's echo of an object call.
fn echo(res: &Response) -> Value {
    serde_json::from_slice(res.body()).expect("the fake echoes JSON")
}

fn echoed_body(echo: &Value) -> Vec<u8> {
    BASE64_STANDARD
        .decode(echo["body"].as_str().unwrap())
        .unwrap()
}

#[tokio::test]
async fn post_carries_method_path_query_body_and_the_turn() {
    let (_fake, turn) = turn_with("tok-7").await;
    let res = turn
        .stub("Counter", ObjectAddr::name("b"))
        .post("/chain?next=c%2Cd", "payload")
        .await
        .unwrap();
    // The answer comes back as it is: status, repeated headers, body.
    assert_eq!(res.status(), StatusCode::CREATED);
    let echoes: Vec<_> = res.headers().get_all("x-echo").iter().collect();
    assert_eq!(echoes, ["1", "2"]);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert!(res.headers().get("stead-rollback").is_none());
    let e = echo(&res);
    assert_eq!(e["method"], "POST");
    assert_eq!(e["uri"], "/v1/objects/Counter/name/b/chain?next=c%2Cd");
    assert_eq!(e["headers"]["stead-turn"], json!(["tok-7"]));
    assert_eq!(e["headers"]["content-length"], json!(["7"]));
    assert_eq!(echoed_body(&e), b"payload");
}

#[tokio::test]
async fn names_are_percent_encoded_and_ids_are_addressed_by_id() {
    let (_fake, turn) = turn_with("tok").await;
    let res = turn
        .stub("Counter", ObjectAddr::name("a/b c?é~-_.%"))
        .get("/value")
        .await
        .unwrap();
    assert_eq!(
        echo(&res)["uri"],
        "/v1/objects/Counter/name/a%2Fb%20c%3F%C3%A9~-_.%25/value"
    );

    let res = turn
        .stub("Counter", ObjectAddr::id(ID))
        .get("value?x=1")
        .await
        .unwrap();
    let e = echo(&res);
    assert_eq!(e["method"], "GET");
    assert_eq!(e["uri"], format!("/v1/objects/Counter/id/{ID}/value?x=1"));
    assert!(echoed_body(&e).is_empty());

    // An empty path is the object's root.
    let res = turn
        .stub("Counter", ObjectAddr::name("b"))
        .get("")
        .await
        .unwrap();
    assert_eq!(echo(&res)["uri"], "/v1/objects/Counter/name/b/");
}

#[tokio::test]
async fn fetch_forwards_headers_but_not_stead_ones_and_sends_its_own_turn() {
    let (_fake, turn) = turn_with("mine").await;
    // As if forwarding an incoming event: it carries the sidecar's stead-* headers.
    let req = http::Request::builder()
        .method(Method::PUT)
        .uri("/profile?v=2")
        .header("stead-turn", "someone-else")
        .header("stead-class", "Other")
        .header("stead-event", "request")
        .header("host", "client.example")
        .header("content-length", "3")
        .header("connection", "keep-alive")
        .header("x-client", "yes")
        .header("x-multi", "a")
        .header("x-multi", "b")
        .body(Bytes::from_static(b"abc"))
        .unwrap();
    let res = turn
        .stub("User", ObjectAddr::name("al"))
        .fetch(req)
        .await
        .unwrap();
    let e = echo(&res);
    assert_eq!(e["method"], "PUT");
    assert_eq!(e["uri"], "/v1/objects/User/name/al/profile?v=2");
    let h = &e["headers"];
    assert_eq!(h["stead-turn"], json!(["mine"]));
    assert!(h.get("stead-class").is_none());
    assert!(h.get("stead-event").is_none());
    assert_eq!(h["x-client"], json!(["yes"]));
    assert_eq!(h["x-multi"], json!(["a", "b"]));
    assert_eq!(h["content-length"], json!(["3"]));
    assert_ne!(h["host"], json!(["client.example"]));
    assert_eq!(echoed_body(&e), b"abc");
    // The answer's framing headers are dropped: its body is whole in memory.
    assert!(res.headers().get("content-length").is_none());
}

#[tokio::test]
async fn sidecar_refusals_and_callee_failures_are_answers_not_errors() {
    let (_fake, turn) = turn_with("tok").await;
    let res = turn
        .stub("Counter", ObjectAddr::name("cycle"))
        .post("/chain?next=a", "")
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::LOOP_DETECTED);
    let body: Value = serde_json::from_slice(res.body()).unwrap();
    assert_eq!(body["error"]["code"], "call_cycle");

    let req = http::Request::builder()
        .uri("/increment")
        .header("x-status", "500")
        .body(Bytes::new())
        .unwrap();
    let res = turn
        .stub("Counter", ObjectAddr::name("b"))
        .fetch(req)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn stateless_requests_call_objects_with_their_token() {
    let (_fake, url) = FakeApi::start().await;
    let ctx = StatelessContext::new(
        HeaderValue::from_static("front"),
        ApiClient::new(&url).unwrap(),
    );
    let stub = ctx.stub("Counter", ObjectAddr::name("x"));
    assert_eq!(stub.class(), "Counter");
    assert_eq!(stub.addr(), &ObjectAddr::name("x"));
    let res = stub.post("/increment", "").await.unwrap();
    let e = echo(&res);
    assert_eq!(e["uri"], "/v1/objects/Counter/name/x/increment");
    assert_eq!(e["headers"]["stead-turn"], json!(["front"]));
}

#[tokio::test]
async fn failures_to_call_are_errors() {
    let (_fake, turn) = turn_with("tok").await;
    let stub = turn.stub("Counter", ObjectAddr::name("b"));
    assert!(matches!(stub.get("/a b").await, Err(Error::Protocol(_))));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let ctx = StatelessContext::new(
        HeaderValue::from_static("tok"),
        ApiClient::new(&format!("http://{addr}")).unwrap(),
    );
    assert!(matches!(
        ctx.stub("Counter", ObjectAddr::name("b"))
            .get("/value")
            .await,
        Err(Error::Transport(_))
    ));
}

#[test]
fn addresses_display_as_path_segments() {
    assert_eq!(ObjectAddr::name("a b/c").to_string(), "name/a%20b%2Fc");
    assert_eq!(ObjectAddr::id(ID).to_string(), format!("id/{ID}"));
}
