//! The app API client's wire format, checked against the fake API over loopback HTTP.

use base64::prelude::*;
use http::{HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::fake_api::FakeApi;
use crate::client::ApiClient;
use crate::{Error, ListOptions, SqlValue, Storage};

async fn storage_with(token: &'static str) -> (FakeApi, Storage) {
    let (fake, url) = FakeApi::start().await;
    let api = ApiClient::new(&url).unwrap();
    (fake, Storage::new(api, HeaderValue::from_static(token)))
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Point {
    x: i32,
    y: i32,
}

#[tokio::test]
async fn put_sends_base64_of_the_json_bytes_with_the_turn_header() {
    let (fake, storage) = storage_with("tok-1").await;
    storage.put("p", &Point { x: 1, y: -2 }).await.unwrap();
    let call = fake.last();
    assert_eq!(call.path, "/v1/kv/put");
    assert_eq!(call.turn.as_deref(), Some("tok-1"));
    assert_eq!(call.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        call.body,
        json!({"key": "p", "value": BASE64_STANDARD.encode(br#"{"x":1,"y":-2}"#)})
    );
}

#[tokio::test]
async fn get_decodes_what_put_stored_and_misses_are_none() {
    let (fake, storage) = storage_with("tok").await;
    storage.put("p", &Point { x: 3, y: 4 }).await.unwrap();
    assert_eq!(
        storage.get::<Point>("p").await.unwrap(),
        Some(Point { x: 3, y: 4 })
    );
    assert_eq!(fake.last().body, json!({"key": "p"}));
    assert_eq!(storage.get::<Point>("missing").await.unwrap(), None);
    // Bytes written by another language's app, read raw.
    storage.put_bytes("raw", &[0, 159, 255]).await.unwrap();
    assert_eq!(fake.stored("raw").as_deref(), Some("AJ//"));
    assert_eq!(
        storage.get_bytes("raw").await.unwrap(),
        Some(vec![0, 159, 255])
    );
    // Stored bytes that are not the JSON of the type asked for.
    assert!(matches!(
        storage.get::<Point>("raw").await,
        Err(Error::Json(_))
    ));
}

#[tokio::test]
async fn batch_calls_use_the_batch_forms() {
    let (fake, storage) = storage_with("tok").await;
    let written = storage
        .put_many([("a", 1), ("b", 2), ("c", 3)])
        .await
        .unwrap();
    assert_eq!(written, 3);
    assert_eq!(
        fake.last().body,
        json!({"entries": [
            {"key": "a", "value": BASE64_STANDARD.encode("1")},
            {"key": "b", "value": BASE64_STANDARD.encode("2")},
            {"key": "c", "value": BASE64_STANDARD.encode("3")},
        ]})
    );

    let got: Vec<(String, i64)> = storage.get_many(&["c", "nope", "a"]).await.unwrap();
    assert_eq!(fake.last().body, json!({"keys": ["c", "nope", "a"]}));
    assert_eq!(got, vec![("c".into(), 3), ("a".into(), 1)]);

    assert!(storage.delete("a").await.unwrap());
    assert_eq!(fake.last().body, json!({"key": "a"}));
    assert!(!storage.delete("a").await.unwrap());

    assert_eq!(storage.delete_many(&["b", "zz"]).await.unwrap(), 1);
    assert_eq!(fake.last().body, json!({"keys": ["b", "zz"]}));

    assert_eq!(storage.delete_all().await.unwrap(), 1);
    assert_eq!(fake.last().path, "/v1/kv/delete-all");
    assert_eq!(fake.last().body, json!({}));
}

#[tokio::test]
async fn list_sends_only_the_options_given() {
    let (fake, storage) = storage_with("tok").await;
    storage
        .put_many([
            ("m:1", "one"),
            ("m:2", "two"),
            ("m:3", "three"),
            ("x", "other"),
        ])
        .await
        .unwrap();

    let all: Vec<(String, String)> = storage.list(ListOptions::all()).await.unwrap();
    assert_eq!(fake.last().body, json!({}));
    assert_eq!(all.len(), 4);

    let some: Vec<(String, String)> = storage
        .list(ListOptions::prefix("m:").start("m:2").reverse().limit(1))
        .await
        .unwrap();
    assert_eq!(
        fake.last().body,
        json!({"prefix": "m:", "start": "m:2", "limit": 1, "reverse": true})
    );
    assert_eq!(some, vec![("m:3".to_owned(), "three".to_owned())]);
}

#[tokio::test]
async fn sql_sends_params_in_the_wire_form_and_reads_the_result() {
    let (fake, storage) = storage_with("tok").await;
    let r = storage
        .sql(
            "SELECT ?, ?, ?, ?, ?",
            &[
                SqlValue::Null,
                42.into(),
                2.5.into(),
                "text".into(),
                vec![1u8, 2, 3].into(),
            ],
        )
        .await
        .unwrap();
    let call = fake.last();
    assert_eq!(call.path, "/v1/sql/exec");
    assert_eq!(
        call.body,
        json!({"sql": "SELECT ?, ?, ?, ?, ?", "params": [null, 42, 2.5, "text", {"base64": "AQID"}]})
    );
    assert_eq!(r.columns, ["p0", "p1", "p2", "p3", "p4"]);
    assert_eq!(r.rows_read, 3);
    assert_eq!(r.rows_written, 2);
    let row: Vec<SqlValue> = r.rows[0].iter().filter_map(SqlValue::from_json).collect();
    assert_eq!(row[4], SqlValue::Blob(vec![1, 2, 3]));
    assert_eq!(r.scalar(), Some(&serde_json::Value::Null));

    // Without parameters, `params` is still sent, empty.
    storage.sql("SELECT 1; SELECT 2", &[]).await.unwrap();
    assert_eq!(
        fake.last().body,
        json!({"sql": "SELECT 1; SELECT 2", "params": []})
    );
}

#[tokio::test]
async fn api_refusals_carry_status_code_and_message() {
    let (_fake, storage) = storage_with("tok").await;
    let err = storage.put(&"k".repeat(2049), &1).await.unwrap_err();
    let api = err.api().expect("an API error");
    assert_eq!(api.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(api.code, "key_too_large");
    assert_eq!(api.message, "key is 2049 bytes; the limit is 2048");
    assert_eq!(err.code(), "key_too_large");

    // Passed on to a client, the refusal keeps its status and body.
    let res = api.to_response();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
    assert_eq!(body["error"]["code"], "key_too_large");

    // An error body that is not JSON still becomes an API error.
    let err = storage.get::<i64>("plain-error").await.unwrap_err();
    let api = err.api().expect("an API error");
    assert_eq!(api.status, StatusCode::BAD_GATEWAY);
    assert_eq!(api.code, "http_error");
    assert_eq!(api.message, "oops, not JSON");

    // A value that is not base64 is the API's fault, not the app's.
    assert!(matches!(
        storage.get_bytes("bad-base64").await,
        Err(Error::Protocol(_))
    ));
}

#[tokio::test]
async fn a_finished_turn_gets_410() {
    let (_fake, storage) = storage_with("finished").await;
    let err = storage.put("k", &1).await.unwrap_err();
    let api = err.api().expect("an API error");
    assert_eq!(api.status, StatusCode::GONE);
    assert_eq!(api.code, "turn_finished");
}

#[tokio::test]
async fn an_unreachable_api_is_a_transport_error() {
    // Bind then drop a listener: nothing listens on that port any more.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let api = ApiClient::new(&format!("http://{addr}/")).unwrap();
    let storage = Storage::new(api, HeaderValue::from_static("tok"));
    assert!(matches!(
        storage.get::<i64>("k").await,
        Err(Error::Transport(_))
    ));
}

#[test]
fn api_urls_must_be_http() {
    assert!(ApiClient::new("http://127.0.0.1:9787").is_ok());
    assert!(ApiClient::new("http://127.0.0.1:9787/").is_ok());
    assert!(ApiClient::new("https://127.0.0.1:9787").is_err());
    assert!(ApiClient::new("not a url").is_err());
}
