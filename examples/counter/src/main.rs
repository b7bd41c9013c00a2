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
//! | `POST /alarm?in_ms=N` | sets the alarm N ms ahead (default 0); when it fires, its handler increments `n`; answers `{"time_ms"}` |
//! | `POST /alarm?in_ms=N&fail=1` | sets the alarm, then answers 500: the turn rolls back, so the alarm never fires |
//! | `POST /alarm-fail?in_ms=N` | sets an alarm whose handler always fails (500): the sidecar retries it, then drops it |
//! | `GET /alarm` | `{"time_ms": t}` or `{"time_ms": null}` |
//! | `DELETE /alarm` | deletes the alarm; `{"deleted": true or false}` |
//! | `GET /alarm-attempts` | the `stead-alarm-retry` numbers the alarm handler saw since the last `POST /alarm…`, e.g. `[0,1,2]`; `?detail=1` adds the time of each (`[{"retry", "at_ms"}]`) |
//!
//! The attempts are kept in the app's memory, outside the object (a failed alarm turn rolls
//! back its writes, and the instance is rebuilt after a rollback), keyed by object id.
//!
//! So `POST /objects/Counter/name/a/chain?next=b` is a call a → b answering b's new value, and
//! `…/name/a/chain?next=b,a` is a → b → a, which the sidecar refuses with `508 call_cycle`
//! (a is busy earlier in the chain); the 508 comes back through b and a to the client.
//!
//! Stateless routes: `GET /` (what this is), `GET /late-call-result` (the status the late
//! call got: `410` once the turn is over; `pending` while waiting; `none` before any), and
//! `POST /call?name=x&path=/increment` (calls `Counter` `x` with `POST path` and answers with its
//! answer: an object call from a stateless request).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use serde_json::json;
use stead_sdk::http::{Method, StatusCode};
use stead_sdk::{
    AlarmInfo, App, DurableObject, Error, ObjectAddr, ObjectInfo, Request, RequestExt, Response,
    Result, SqlValue, StatelessContext, Storage, Turn, async_trait, now_ms, response,
};

/// How long the late call waits after its turn answered.
const LATE_CALL_DELAY: Duration = Duration::from_millis(300);

/// What the last late call got back: `none`, `pending`, or the status of the app API's answer.
static LATE_CALL_RESULT: Mutex<Option<String>> = Mutex::new(None);

fn set_late_call_result(value: &str) {
    let mut slot = LATE_CALL_RESULT.lock().unwrap_or_else(|e| e.into_inner());
    *slot = Some(value.to_owned());
}

/// One run of the alarm handler: the retry number it was given, and when.
#[derive(Clone, Copy, serde::Serialize)]
struct Attempt {
    retry: u32,
    at_ms: i64,
}

/// Object id → the alarm handler runs since the object's last `POST /alarm…`. In memory,
/// outside the object: a failed alarm turn rolls back every write, and the instance is rebuilt
/// after a rollback.
static ALARM_ATTEMPTS: Mutex<Option<HashMap<String, Vec<Attempt>>>> = Mutex::new(None);

fn with_attempts<R>(f: impl FnOnce(&mut HashMap<String, Vec<Attempt>>) -> R) -> R {
    let mut slot = ALARM_ATTEMPTS.lock().unwrap_or_else(|e| e.into_inner());
    f(slot.get_or_insert_with(HashMap::new))
}

/// KV key of what the pending alarm does when it fires: `increment` or `fail`.
const ALARM_MODE: &str = "alarm_mode";

/// `POST /alarm` and `POST /alarm-fail`: sets the alarm `in_ms` ahead with `mode`.
async fn set_alarm(turn: &Turn, req: &Request, mode: &str) -> Result<Response> {
    let Some(in_ms) = req
        .query_param("in_ms")
        .map_or(Some(0), |ms| ms.parse::<u64>().ok())
    else {
        return Ok(response::error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "in_ms must be a whole number of milliseconds",
        ));
    };
    let time_ms = turn.alarm().set_in(Duration::from_millis(in_ms)).await?;
    turn.storage().put(ALARM_MODE, mode).await?;
    with_attempts(|a| a.remove(turn.id()));
    if req.query_param("fail").as_deref() == Some("1") {
        return Ok(response::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "failed_on_purpose",
            "set the alarm, then failed: the turn rolls back and the alarm never fires",
        ));
    }
    Ok(response::json(&json!({ "time_ms": time_ms })))
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
            (Method::POST, "/alarm") => set_alarm(turn, &req, "increment").await,
            (Method::POST, "/alarm-fail") => set_alarm(turn, &req, "fail").await,
            (Method::GET, "/alarm") => {
                let time_ms = turn.alarm().get().await?;
                Ok(response::json(&json!({ "time_ms": time_ms })))
            }
            (Method::DELETE, "/alarm") => {
                let deleted = turn.alarm().delete().await?;
                Ok(response::json(&json!({ "deleted": deleted })))
            }
            (Method::GET, "/alarm-attempts") => {
                let attempts = with_attempts(|a| a.get(turn.id()).cloned().unwrap_or_default());
                if req.query_param("detail").as_deref() == Some("1") {
                    Ok(response::json(&attempts))
                } else {
                    let retries: Vec<u32> = attempts.iter().map(|a| a.retry).collect();
                    Ok(response::json(&retries))
                }
            }
            (_, path) => Ok(response::error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("the counter has no route {} {path}", req.method()),
            )),
        }
    }

    /// The alarm set by `POST /alarm` increments the counter; the one set by
    /// `POST /alarm-fail` fails every time. Both record the attempt first.
    async fn alarm(&mut self, turn: &Turn, info: AlarmInfo) -> Result<()> {
        self.events += 1;
        with_attempts(|a| {
            a.entry(turn.id().to_owned()).or_default().push(Attempt {
                retry: info.retry,
                at_ms: now_ms(),
            });
        });
        let storage = turn.storage();
        let mode = storage.get::<String>(ALARM_MODE).await?;
        if mode.as_deref() == Some("fail") {
            tracing::info!(id = %turn.id(), retry = info.retry, "the failing alarm fails on purpose");
            return Err(Error::msg(format!(
                "this alarm fails on purpose (retry {})",
                info.retry
            )));
        }
        let n = increment(&storage).await?;
        tracing::debug!(id = %turn.id(), retry = info.retry, n, "alarm incremented the counter");
        Ok(())
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
            "Stead counter example. Try POST /objects/Counter/name/{name}/increment, \
             GET /objects/Counter/name/{name}/value, and \
             POST /objects/Counter/name/{name}/alarm?in_ms=1000 (the alarm increments).\n",
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
