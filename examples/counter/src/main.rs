//! The counter: the smallest useful Stead app, and the app the integration tests and the
//! benchmark drive.
//!
//! Object routes (as the app sees them, after the sidecar strips
//! `/objects/Counter/name/{name}`):
//!
//! | route | answer |
//! |---|---|
//! | `POST /increment` | the new value of the KV counter (key `n`) |
//! | `POST /increment?fail=1` | writes the increment, then answers 500 so the turn rolls back |
//! | `GET /value` | the KV counter, 0 if never written |
//! | `POST /sql-increment` | the new value of the counter kept in an SQL table |
//! | `GET /sql-value` | the SQL counter, 0 if never written |
//! | `GET /whoami` | `{"class", "id", "name"}` as the app saw them |
//! | `GET /instance` | `{"events": n}`: events handled by this in-memory instance |
//! | `POST /sleep?ms=N` | sleeps N ms, then increments and answers the new value |
//! | `POST /put-raw` | `{"key", "value"}` stored as is; API refusals passed through |
//! | `GET /get-raw?key=k` | the JSON stored under `k`, 404 if none |
//! | `POST /sql` | `{"sql", "params"}` run as is; API refusals passed through |
//! | `POST /late-call` | answers at once; ~300 ms later a task calls storage with this turn's token |
//! | `POST /chain?next=b,c` | empty `next`: increments and answers the new value; else calls `Counter` `b` at `POST /chain?next=c` and answers with its status and body |
//!
//! So `POST /objects/Counter/name/a/chain?next=b` is a call a → b answering b's new value, and
//! `…/name/a/chain?next=b,a` is a → b → a, which the sidecar refuses with `508 call_cycle`
//! (a is busy earlier in the chain); the 508 comes back through b and a to the client.
//!
//! Stateless routes: `GET /` (what this is), `GET /late-call-result` (the status the late
//! call got: `410` once the turn is over; `pending` while waiting; `none` before any), and
//! `POST /call?name=x&path=/increment` (calls `Counter` `x` with `POST path` and answers with its
//! answer: an object call from a stateless request).

use std::sync::Mutex;
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use serde_json::json;
use stead_sdk::http::{Method, StatusCode};
use stead_sdk::{
    App, DurableObject, Error, ObjectAddr, ObjectInfo, Request, RequestExt, Response, Result,
    SqlValue, StatelessContext, Storage, Turn, async_trait, response,
};

/// How long the late call waits after its turn answered.
const LATE_CALL_DELAY: Duration = Duration::from_millis(300);

/// What the last late call got back: `none`, `pending`, or the status of the app API's answer.
static LATE_CALL_RESULT: Mutex<Option<String>> = Mutex::new(None);

fn set_late_call_result(value: &str) {
    let mut slot = LATE_CALL_RESULT.lock().unwrap_or_else(|e| e.into_inner());
    *slot = Some(value.to_owned());
}

struct Counter {
    /// Events handled by this in-memory instance: shows the instance cache at work (it starts
    /// again from 1 after a hibernation or a rolled-back turn).
    events: u64,
}

#[derive(Deserialize)]
struct PutRaw {
    key: String,
    value: serde_json::Value,
}

#[derive(Deserialize)]
struct RawSql {
    sql: String,
    #[serde(default)]
    params: Vec<SqlValue>,
}

const SQL_INCREMENT: &str = "CREATE TABLE IF NOT EXISTS counter (k INTEGER PRIMARY KEY, v INTEGER);
INSERT INTO counter (k, v) VALUES (1, 1) ON CONFLICT (k) DO UPDATE SET v = v + 1 RETURNING v";

async fn increment(storage: &Storage) -> Result<i64> {
    let n = storage.get::<i64>("n").await?.unwrap_or(0) + 1;
    storage.put("n", &n).await?;
    Ok(n)
}

/// Passes an app API refusal on to the client with its status and JSON body; other errors fail
/// the turn.
fn pass_through(result: Result<Response>) -> Result<Response> {
    match result {
        Err(Error::Api(refusal)) => Ok(refusal.to_response()),
        other => other,
    }
}

/// What stays as it is in a query value: RFC 3986 unreserved characters, and `,` (which
/// separates the names of `/chain?next=`).
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b',');

/// `POST /chain?next=b,c`: with no name left, increments; otherwise calls the first name with
/// the rest, and answers with the callee's answer (status, headers and body) as it is.
async fn chain(turn: &Turn, req: &Request) -> Result<Response> {
    let next = req.query_param("next").unwrap_or_default();
    let mut names = next.split(',').filter(|n| !n.is_empty());
    let Some(first) = names.next() else {
        let n = increment(&turn.storage()).await?;
        return Ok(response::text(n.to_string()));
    };
    let rest = names.collect::<Vec<_>>().join(",");
    let path = format!("/chain?next={}", utf8_percent_encode(&rest, QUERY_VALUE));
    // A 508 `call_cycle` from the sidecar, or any answer of the callee, is passed on; an answer
    // of 500 or more also rolls this turn back (it wrote nothing).
    turn.stub("Counter", ObjectAddr::name(first))
        .post(&path, "")
        .await
}

fn bad_json(e: Error) -> Response {
    response::error(StatusCode::BAD_REQUEST, "invalid_json", &e.to_string())
}

#[async_trait]
impl DurableObject for Counter {
    fn new(_object: &ObjectInfo) -> Self {
        Counter { events: 0 }
    }

    async fn fetch(&mut self, turn: &Turn, req: Request) -> Result<Response> {
        self.events += 1;
        let storage = turn.storage();
        match (req.method().clone(), req.uri().path()) {
            (Method::POST, "/increment") => {
                let n = increment(&storage).await?;
                if req.query_param("fail").as_deref() == Some("1") {
                    return Ok(response::error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "failed_on_purpose",
                        &format!("incremented to {n}, then failed: the turn rolls back"),
                    ));
                }
                Ok(response::text(n.to_string()))
            }
            (Method::GET, "/value") => {
                let n = storage.get::<i64>("n").await?.unwrap_or(0);
                Ok(response::text(n.to_string()))
            }
            (Method::POST, "/sql-increment") => {
                let r = storage.sql(SQL_INCREMENT, &[]).await?;
                let n = r
                    .scalar()
                    .and_then(serde_json::Value::as_i64)
                    .ok_or_else(|| Error::msg("the upsert returned no value"))?;
                Ok(response::text(n.to_string()))
            }
            (Method::GET, "/sql-value") => {
                let n = match storage
                    .sql("SELECT v FROM counter WHERE k = ?", &[1.into()])
                    .await
                {
                    Ok(r) => r.scalar().and_then(serde_json::Value::as_i64).unwrap_or(0),
                    // The table is created by the first increment; reading creates nothing.
                    Err(Error::Api(e)) if e.message.contains("no such table") => 0,
                    Err(e) => return Err(e),
                };
                Ok(response::text(n.to_string()))
            }
            (Method::GET, "/whoami") => Ok(response::json(&json!({
                "class": turn.class(),
                "id": turn.id(),
                "name": turn.name(),
            }))),
            (Method::GET, "/instance") => Ok(response::json(&json!({ "events": self.events }))),
            (Method::POST, "/sleep") => {
                let ms = req
                    .query_param("ms")
                    .and_then(|ms| ms.parse::<u64>().ok())
                    .unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                let n = increment(&storage).await?;
                Ok(response::text(n.to_string()))
            }
            (Method::POST, "/put-raw") => {
                let body: PutRaw = match req.json() {
                    Ok(b) => b,
                    Err(e) => return Ok(bad_json(e)),
                };
                pass_through(
                    storage
                        .put(&body.key, &body.value)
                        .await
                        .map(|()| response::json(&json!({ "written": 1 }))),
                )
            }
            (Method::GET, "/get-raw") => {
                let key = req.query_param("key").unwrap_or_default();
                pass_through(
                    storage
                        .get::<serde_json::Value>(&key)
                        .await
                        .map(|v| match v {
                            Some(v) => response::json(&v),
                            None => response::error(
                                StatusCode::NOT_FOUND,
                                "not_found",
                                &format!("no value under {key:?}"),
                            ),
                        }),
                )
            }
            (Method::POST, "/sql") => {
                let body: RawSql = match req.json() {
                    Ok(b) => b,
                    Err(e) => return Ok(bad_json(e)),
                };
                pass_through(
                    storage
                        .sql(&body.sql, &body.params)
                        .await
                        .map(|r| response::json(&r)),
                )
            }
            (Method::POST, "/late-call") => {
                set_late_call_result("pending");
                // `storage` carries this turn's token; the task outlives the turn.
                tokio::spawn(async move {
                    tokio::time::sleep(LATE_CALL_DELAY).await;
                    let outcome = match storage.put("late", &1).await {
                        Ok(()) => "200".to_owned(),
                        Err(Error::Api(e)) => e.status.as_u16().to_string(),
                        Err(e) => format!("error: {e}"),
                    };
                    tracing::info!(%outcome, "late call answered");
                    set_late_call_result(&outcome);
                });
                Ok(response::text("late call scheduled"))
            }
            (Method::POST, "/chain") => chain(turn, &req).await,
            (_, path) => Ok(response::error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("the counter has no route {} {path}", req.method()),
            )),
        }
    }
}

/// `POST /call?name=x&path=/increment`: calls `Counter` `x` with `POST path` (the request's body
/// goes along) and answers with its answer.
async fn call(req: Request, ctx: StatelessContext) -> Response {
    let (Some(name), Some(path)) = (req.query_param("name"), req.query_param("path")) else {
        return response::error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "POST /call needs the query parameters name and path",
        );
    };
    match ctx
        .stub("Counter", ObjectAddr::name(name))
        .post(&path, req.body().clone())
        .await
    {
        Ok(res) => res,
        Err(e) => response::error(StatusCode::BAD_GATEWAY, e.code(), &e.to_string()),
    }
}

async fn front_door(req: Request, ctx: StatelessContext) -> Response {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => response::text(
            "Stead counter example. Try POST /objects/Counter/name/{name}/increment \
             and GET /objects/Counter/name/{name}/value.\n",
        ),
        (&Method::GET, "/late-call-result") => {
            let slot = LATE_CALL_RESULT.lock().unwrap_or_else(|e| e.into_inner());
            response::text(slot.as_deref().unwrap_or("none"))
        }
        (&Method::POST, "/call") => call(req, ctx).await,
        (method, path) => response::error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no route {method} {path}"),
        ),
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let app = App::new().class::<Counter>("Counter").stateless(front_door);
    if let Err(e) = app.serve().await {
        tracing::error!(error = %e, "counter app failed");
        std::process::exit(1);
    }
}
