//! The bad-input matrix: malformed and over-limit requests against a real sidecar, on the
//! ingress (raw bytes over TCP), the admin port and the app API (through an app that makes the
//! calls with a live turn token). Each case checks the exact status, the JSON error shape and
//! its code, and that nothing reached the app or was written.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::Shard;
use support::free_port;
use support::proxy_app::ProxyApp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Small limits so that over-limit cases stay small.
const FLAGS: [&str; 8] = [
    "--max-request-bytes",
    "4096",
    "--max-value-bytes",
    "100",
    "--max-statement-bytes",
    "200",
    "--header-timeout",
    "5s",
];

/// The object the ingress cases aim at.
const VICTIM: &str = "/objects/Counter/name/victim/x";

enum Port {
    Ingress,
    Admin,
}

struct RawCase {
    what: &'static str,
    port: Port,
    request: Vec<u8>,
    status: u16,
    code: &'static str,
}

fn raw(
    what: &'static str,
    request: impl Into<Vec<u8>>,
    status: u16,
    code: &'static str,
) -> RawCase {
    RawCase {
        what,
        port: Port::Ingress,
        request: request.into(),
        status,
        code,
    }
}

fn admin(what: &'static str, request: &str, status: u16, code: &'static str) -> RawCase {
    RawCase {
        what,
        port: Port::Admin,
        request: request.as_bytes().to_vec(),
        status,
        code,
    }
}

/// A request to `target` with `Connection: close`, no body.
fn get(target: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
}

fn post_chunked(chunks: &str) -> String {
    format!(
        "POST {VICTIM} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}"
    )
}

fn raw_cases() -> Vec<RawCase> {
    let long_uri = format!("/objects/Counter/name/victim/{}", "a".repeat(9000));
    let big_header = format!(
        "GET {VICTIM} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "b".repeat(40_000)
    );
    let huge_head = format!(
        "GET {VICTIM} HTTP/1.1\r\nHost: x\r\nX-Huge: {}\r\n\r\n",
        "h".repeat(300_000)
    );
    let mut many_headers = format!("GET {VICTIM} HTTP/1.1\r\nHost: x\r\n");
    for i in 0..600 {
        many_headers.push_str(&format!("X-{i}: v\r\n"));
    }
    many_headers.push_str("\r\n");
    let long_name = format!("/objects/Counter/name/{}/x", "n".repeat(513));
    let over_body = format!("{:x}\r\n{}\r\n0\r\n\r\n", 5000, "z".repeat(5000));
    let mut bad_utf8_header = format!("GET {VICTIM} HTTP/1.1\r\nHost: x\r\nX-").into_bytes();
    bad_utf8_header.extend_from_slice(&[0xff, 0xfe]);
    bad_utf8_header.extend_from_slice(b": v\r\n\r\n");
    let mut nul_target = b"GET /objects/Counter/name/vic".to_vec();
    nul_target.push(0);
    nul_target.extend_from_slice(b"tim/x HTTP/1.1\r\nHost: x\r\n\r\n");
    vec![
        // What hyper cannot parse: it answers before any request exists.
        raw(
            "garbage request line",
            "HELLO\r\n\r\n",
            400,
            "malformed_request",
        ),
        raw(
            "bad method token",
            format!("G@T {VICTIM} HTTP/1.1\r\nHost: x\r\n\r\n"),
            400,
            "malformed_request",
        ),
        raw(
            "unknown HTTP version",
            format!("GET {VICTIM} HTTP/9.9\r\nHost: x\r\n\r\n"),
            400,
            "malformed_request",
        ),
        raw(
            "space in a header name",
            format!("GET {VICTIM} HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n"),
            400,
            "malformed_request",
        ),
        raw(
            "header without a colon",
            format!("GET {VICTIM} HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n"),
            400,
            "malformed_request",
        ),
        raw(
            "invalid UTF-8 in a header name",
            bad_utf8_header,
            400,
            "malformed_request",
        ),
        raw("NUL in the target", nul_target, 400, "malformed_request"),
        raw(
            "non-numeric Content-Length",
            format!("POST {VICTIM} HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n"),
            400,
            "malformed_request",
        ),
        raw(
            "two different Content-Lengths",
            format!(
                "POST {VICTIM} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
            ),
            400,
            "malformed_request",
        ),
        raw(
            "Transfer-Encoding not ending in chunked",
            format!("POST {VICTIM} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"),
            400,
            "malformed_request",
        ),
        raw(
            "head larger than hyper's buffer",
            huge_head,
            431,
            "headers_too_large",
        ),
        raw(
            "more headers than hyper parses",
            many_headers,
            431,
            "headers_too_large",
        ),
        // Targets that are not paths.
        raw(
            "OPTIONS *",
            "OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            400,
            "invalid_target",
        ),
        raw(
            "GET *",
            "GET * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            400,
            "invalid_target",
        ),
        raw(
            "CONNECT authority-form",
            "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n",
            400,
            "invalid_target",
        ),
        raw(
            "absolute-form target",
            get("http://example.com/objects/Counter/name/victim/x"),
            400,
            "invalid_target",
        ),
        raw(
            "absolute-form naming the app",
            get("http://127.0.0.1:80/x"),
            400,
            "invalid_target",
        ),
        // Our limits on the head.
        raw(
            "URI over --max-uri-bytes",
            get(&long_uri),
            414,
            "uri_too_long",
        ),
        raw(
            "headers over --max-header-bytes",
            big_header,
            431,
            "headers_too_large",
        ),
        // Bodies.
        raw(
            "huge Content-Length, no body sent",
            format!(
                "POST {VICTIM} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000000\r\n\r\n"
            ),
            413,
            "body_too_large",
        ),
        raw(
            "Content-Length over the limit on a stateless route",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4097\r\n\r\n",
            413,
            "body_too_large",
        ),
        raw(
            "chunked body over the limit",
            post_chunked(&over_body),
            413,
            "body_too_large",
        ),
        raw(
            "chunk size not hex",
            post_chunked("zz\r\nhello\r\n0\r\n\r\n"),
            400,
            "malformed_body",
        ),
        raw(
            "chunk size overflows",
            post_chunked("fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
            400,
            "malformed_body",
        ),
        raw(
            "chunk data longer than its size",
            post_chunked("2\r\nhello\r\n0\r\n\r\n"),
            400,
            "malformed_body",
        ),
        // Routes.
        raw(
            "name not UTF-8",
            get("/objects/Counter/name/%ff%fe/x"),
            400,
            "invalid_path",
        ),
        raw(
            "empty name",
            get("/objects/Counter/name//x"),
            400,
            "invalid_name",
        ),
        raw("name over 512 bytes", get(&long_name), 400, "invalid_name"),
        raw(
            "id not hex",
            get("/objects/Counter/id/xyz/x"),
            400,
            "invalid_id",
        ),
        raw(
            "id of the wrong length",
            get("/objects/Counter/id/abcd/x"),
            400,
            "invalid_id",
        ),
        raw(
            "unknown class",
            get("/objects/Nope/name/victim/x"),
            404,
            "unknown_class",
        ),
        raw(
            "invalid class name",
            get("/objects/b@d!/name/victim/x"),
            400,
            "invalid_class",
        ),
        raw(
            "class name not UTF-8",
            get("/objects/%ff/name/victim/x"),
            400,
            "invalid_path",
        ),
        raw(
            "neither name nor id",
            get("/objects/Counter/what/victim/x"),
            404,
            "not_found",
        ),
        raw(
            "new-id with GET",
            get("/objects/Counter/new-id"),
            405,
            "method_not_allowed",
        ),
        // The admin port.
        admin("admin: unknown path", &get("/nope"), 404, "not_found"),
        admin(
            "admin: POST /healthz",
            "POST /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            405,
            "method_not_allowed",
        ),
        admin(
            "admin: OPTIONS *",
            "OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            400,
            "invalid_target",
        ),
        admin(
            "admin: garbage",
            "\x01\x02\x03\r\n\r\n",
            400,
            "malformed_request",
        ),
    ]
}

/// Sends `request` on a new connection and reads the answer until the server closes.
async fn exchange(port: u16, request: &[u8]) -> (u16, String, Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // The server may answer and close before it has read everything; keep what came back.
    let _ = s.write_all(request).await;
    let mut got = vec![];
    let read_all = async {
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(20), read_all)
        .await
        .is_err()
    {
        return (0, "the server kept the connection open".into(), Value::Null);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return (0, text, Value::Null);
    };
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (
        status,
        head.to_ascii_lowercase(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn error_shape_ok(body: &Value, code: &str) -> bool {
    body["error"]["code"] == code
        && body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
        && body.as_object().map(|o| o.len()) == Some(1)
}

fn assert_error_shape(what: &str, body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "{what}: {body}");
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(!message.is_empty(), "{what}: no message in {body}");
    assert_eq!(body.as_object().map(|o| o.len()), Some(1), "{what}: {body}");
}

#[tokio::test]
async fn malformed_and_over_limit_requests_get_exact_json_errors_and_change_nothing() {
    let api = free_port();
    let app = ProxyApp::start(api).await;
    let shard = Shard::start_for(app.port, api, &FLAGS).await;
    support::wait_port(app.port).await;

    let cases = raw_cases();
    let mut checked = 0;
    let mut failures = vec![];
    for case in &cases {
        let port = match case.port {
            Port::Ingress => shard.ingress,
            Port::Admin => shard.admin,
        };
        let delivered = app.events.lock().unwrap().len();
        let (status, head, body) = exchange(port, &case.request).await;
        let reached_app = app.events.lock().unwrap().len() != delivered;
        if status != case.status
            || !head.contains("content-type: application/json")
            || !error_shape_ok(&body, case.code)
            || reached_app
        {
            failures.push(format!(
                "{}: expected {} {}, got {head:?} {body} (reached the app: {reached_app})",
                case.what, case.status, case.code
            ));
        }
        checked += 1;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The app API, called by the app with a live turn token of the object `victim`.
    let value_101 = base64(&[7u8; 101]);
    let entries: Vec<Value> = (0..129)
        .map(|i| json!({"key": format!("k{i}"), "value": base64(b"v")}))
        .collect();
    let keys: Vec<String> = (0..129).map(|i| format!("k{i}")).collect();
    let params: Vec<Value> = (0..101).map(|i| json!(i)).collect();
    let long_sql = format!("CREATE TABLE t(x) -- {}", "p".repeat(200));
    let api_cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "key over the limit",
            json!({"path": "/v1/kv/put", "body": {"key": "k".repeat(2049), "value": base64(b"v")}}),
            413,
            "key_too_large",
        ),
        (
            "value over the limit",
            json!({"path": "/v1/kv/put", "body": {"key": "k", "value": value_101}}),
            413,
            "value_too_large",
        ),
        (
            "value not base64",
            json!({"path": "/v1/kv/put", "body": {"key": "k", "value": "***"}}),
            400,
            "bad_request",
        ),
        (
            "put batch over the limit",
            json!({"path": "/v1/kv/put", "body": {"entries": entries}}),
            400,
            "batch_too_large",
        ),
        (
            "get batch over the limit",
            json!({"path": "/v1/kv/get", "body": {"keys": keys}}),
            400,
            "batch_too_large",
        ),
        (
            "delete batch over the limit",
            json!({"path": "/v1/kv/delete", "body": {"keys": keys}}),
            400,
            "batch_too_large",
        ),
        (
            "body not JSON",
            json!({"path": "/v1/kv/put", "raw": true, "body": "{\"key\": "}),
            400,
            "invalid_json",
        ),
        (
            "JSON of the wrong shape",
            json!({"path": "/v1/kv/put", "body": {"key": 5}}),
            400,
            "invalid_json",
        ),
        (
            "statement over the limit",
            json!({"path": "/v1/sql/exec", "body": {"sql": long_sql}}),
            413,
            "statement_too_large",
        ),
        (
            "too many parameters",
            json!({"path": "/v1/sql/exec", "body": {"sql": "CREATE TABLE t(x)", "params": params}}),
            400,
            "too_many_params",
        ),
        (
            "PRAGMA",
            json!({"path": "/v1/sql/exec", "body": {"sql": "PRAGMA journal_mode=DELETE"}}),
            403,
            "not_allowed",
        ),
        (
            "transaction control",
            json!({"path": "/v1/sql/exec", "body": {"sql": "COMMIT"}}),
            403,
            "not_allowed",
        ),
        (
            "ATTACH",
            json!({"path": "/v1/sql/exec", "body": {"sql": "ATTACH DATABASE 'x.db' AS x"}}),
            403,
            "not_allowed",
        ),
        (
            "reserved table name",
            json!({"path": "/v1/sql/exec", "body": {"sql": "CREATE TABLE _stead_mine(x)"}}),
            403,
            "reserved_name",
        ),
        (
            "SQL syntax error",
            json!({"path": "/v1/sql/exec", "body": {"sql": "CREATE TABLE ("}}),
            400,
            "sql_error",
        ),
        (
            "unknown call",
            json!({"path": "/v1/nope", "body": {}}),
            404,
            "not_found",
        ),
    ];
    for (what, call, status, code) in &api_cases {
        let (outer, got) = shard
            .send(
                "POST",
                "/objects/Counter/name/victim/call",
                &call.to_string(),
            )
            .await;
        assert_eq!(outer, 200, "{what}: {got}");
        let got: Value = serde_json::from_str(&got).unwrap();
        assert_eq!(got["status"], json!(status), "{what}: {got}");
        assert_error_shape(what, &got["body"], code);
        checked += 1;
    }
    // Without a token, or with one the sidecar never issued.
    let (status, body) = app.api_call(None, "/v1/kv/put", "{}").await;
    assert_eq!(status, 401);
    assert_error_shape("no token", &body, "missing_turn");
    let (status, body) = app.api_call(Some("not-a-token"), "/v1/kv/put", "{}").await;
    assert_eq!(status, 401);
    assert_error_shape("forged token", &body, "unknown_turn");
    checked += 2;
    assert!(checked >= 40, "only {checked} cases");

    // Nothing was written: no keys, no tables.
    let list = json!({"path": "/v1/kv/list", "body": {}});
    let (_, got) = shard
        .send(
            "POST",
            "/objects/Counter/name/victim/call",
            &list.to_string(),
        )
        .await;
    let got: Value = serde_json::from_str(&got).unwrap();
    assert_eq!(got["body"]["entries"], json!([]), "{got}");
    let tables = json!({"path": "/v1/sql/exec", "body": {"sql": "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '\\_stead\\_%' ESCAPE '\\'"}});
    let (_, got) = shard
        .send(
            "POST",
            "/objects/Counter/name/victim/call",
            &tables.to_string(),
        )
        .await;
    let got: Value = serde_json::from_str(&got).unwrap();
    assert_eq!(got["status"], 200, "{got}");
    assert_eq!(got["body"]["rows"], json!([]), "{got}");
}

fn base64(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}
