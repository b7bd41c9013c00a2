//! The app API: storage calls from the app, each bound to the turn of its `stead-turn` token.
//! Every limit is checked here, before anything reaches storage, so a refused call writes nothing.

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequest, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use base64::Engine as _;
use http::StatusCode;
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value as Json, json};
use stead_core::protocol;

use crate::chain::CallChain;
use crate::error::ApiError;
pub use crate::limits::Limits;
use crate::route::ObjectRouter;
use crate::storage::{ListQuery, Storage, TurnRef};
use crate::target::{Target, parse_route};
use crate::turn::{Outbox, TurnKind, Turns};
use crate::websocket::registry::{
    Outgoing, Sockets, WsMessage, auto_response_pair, check_attachment, check_close,
};

pub struct ApiState {
    pub storage: Storage,
    pub turns: Arc<Turns>,
    pub limits: Limits,
    pub router: Arc<ObjectRouter>,
    pub sockets: Arc<Sockets>,
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/kv/get", post(kv_get))
        .route("/v1/kv/put", post(kv_put))
        .route("/v1/kv/delete", post(kv_delete))
        .route("/v1/kv/list", post(kv_list))
        .route("/v1/kv/delete-all", post(kv_delete_all))
        .route("/v1/sql/exec", post(sql_exec))
        .route("/v1/alarm/set", post(alarm_set))
        .route("/v1/alarm/get", post(alarm_get))
        .route("/v1/alarm/delete", post(alarm_delete))
        .route("/v1/websockets/list", post(ws_list))
        .route("/v1/websockets/send", post(ws_send))
        .route("/v1/websockets/broadcast", post(ws_broadcast))
        .route("/v1/websockets/close", post(ws_close))
        .route("/v1/websockets/attachment", post(ws_attachment))
        .route("/v1/websockets/auto-response", post(ws_auto_response))
        .route("/v1/objects/{*target}", any(object_call))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such app API call; see docs/app-protocol.md",
            )
        })
        .with_state(state)
}

/// The turn of the `stead-turn` token in `headers`.
fn turn_of(headers: &http::HeaderMap, turns: &Turns) -> Result<TurnKind, ApiError> {
    let token = headers
        .get(protocol::TURN)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing_turn",
                "app API calls need the stead-turn header of the event being handled",
            )
        })?
        .to_str()
        .map_err(|_| ApiError::new(StatusCode::UNAUTHORIZED, "unknown_turn", "unreadable token"))?;
    Ok(turns.resolve(token)?)
}

/// One app API call: the turn it belongs to and its parsed JSON body.
struct Call<T> {
    turn: TurnRef,
    outbox: Outbox,
    body: T,
}

impl<T: DeserializeOwned> FromRequest<Arc<ApiState>> for Call<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<ApiState>) -> Result<Self, ApiError> {
        let (turn, outbox) = match turn_of(req.headers(), &state.turns)? {
            TurnKind::Object { turn, outbox, .. } => (turn, outbox),
            TurnKind::Stateless => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "no_storage",
                    "a stateless request has no storage; call an object instead",
                ));
            }
        };
        let limit = state.limits.max_api_body_bytes;
        let bytes = Limited::new(req.into_body(), limit)
            .collect()
            .await
            .map_err(|_| {
                ApiError::too_large(
                    "body_too_large",
                    format!("app API bodies are limited to {limit} bytes"),
                )
            })?
            .to_bytes();
        let body = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::bad_request("invalid_json", format!("invalid JSON body: {e}"))
        })?;
        Ok(Call { turn, outbox, body })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysBody {
    key: Option<String>,
    keys: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    key: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    key: Option<String>,
    value: Option<String>,
    entries: Option<Vec<Entry>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ListBody {
    prefix: Option<String>,
    start: Option<String>,
    end: Option<String>,
    limit: Option<u64>,
    #[serde(default)]
    reverse: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlBody {
    sql: String,
    #[serde(default)]
    params: Vec<Json>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

/// `{"key": …}` or `{"keys": […]}`, validated; the flag says which form was used.
fn keys_of(body: KeysBody, limits: &Limits) -> Result<(Vec<String>, bool), ApiError> {
    let (keys, single) = match (body.key, body.keys) {
        (Some(k), None) => (vec![k], true),
        (None, Some(ks)) => (ks, false),
        _ => {
            return Err(ApiError::bad_request(
                "bad_request",
                "give either \"key\" or \"keys\"",
            ));
        }
    };
    limits.batch(keys.len())?;
    for k in &keys {
        limits.key(k)?;
    }
    Ok((keys, single))
}

fn encode(v: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(v)
}

fn entries_json(entries: Vec<(String, Vec<u8>)>) -> Json {
    Json::Array(
        entries
            .into_iter()
            .map(|(k, v)| json!({"key": k, "value": encode(&v)}))
            .collect(),
    )
}

async fn kv_get(
    State(s): State<Arc<ApiState>>,
    call: Call<KeysBody>,
) -> Result<Response, ApiError> {
    let (keys, single) = keys_of(call.body, &s.limits)?;
    let found = s.storage.kv_get(&call.turn, keys).await?;
    Ok(if single {
        let value = found.into_iter().next().map(|(_, v)| encode(&v));
        axum::Json(json!({ "value": value })).into_response()
    } else {
        axum::Json(json!({ "entries": entries_json(found) })).into_response()
    })
}

async fn kv_put(State(s): State<Arc<ApiState>>, call: Call<PutBody>) -> Result<Response, ApiError> {
    let raw = match (call.body.key, call.body.value, call.body.entries) {
        (Some(k), Some(v), None) => vec![Entry { key: k, value: v }],
        (None, None, Some(es)) => es,
        _ => {
            return Err(ApiError::bad_request(
                "bad_request",
                "give either \"key\" and \"value\", or \"entries\"",
            ));
        }
    };
    s.limits.batch(raw.len())?;
    let mut entries = Vec::with_capacity(raw.len());
    for e in raw {
        s.limits.key(&e.key)?;
        let v = s.limits.value(&e.key, &e.value)?;
        entries.push((e.key, v));
    }
    let written = s.storage.kv_put(&call.turn, entries).await?;
    Ok(axum::Json(json!({ "written": written })).into_response())
}

async fn kv_delete(
    State(s): State<Arc<ApiState>>,
    call: Call<KeysBody>,
) -> Result<Response, ApiError> {
    let (keys, _) = keys_of(call.body, &s.limits)?;
    let deleted = s.storage.kv_delete(&call.turn, keys).await?;
    Ok(axum::Json(json!({ "deleted": deleted })).into_response())
}

async fn kv_list(
    State(s): State<Arc<ApiState>>,
    call: Call<ListBody>,
) -> Result<Response, ApiError> {
    let b = call.body;
    for k in [&b.prefix, &b.start, &b.end].into_iter().flatten() {
        s.limits.key(k)?;
    }
    let query = ListQuery {
        prefix: b.prefix,
        start: b.start,
        end: b.end,
        limit: b.limit,
        reverse: b.reverse,
    };
    let found = s
        .storage
        .kv_list(&call.turn, query, s.limits.max_sql_result_bytes)
        .await?;
    Ok(axum::Json(json!({ "entries": entries_json(found) })).into_response())
}

async fn kv_delete_all(
    State(s): State<Arc<ApiState>>,
    call: Call<Empty>,
) -> Result<Response, ApiError> {
    let deleted = s.storage.kv_delete_all(&call.turn).await?;
    Ok(axum::Json(json!({ "deleted": deleted })).into_response())
}

async fn sql_exec(
    State(s): State<Arc<ApiState>>,
    call: Call<SqlBody>,
) -> Result<Response, ApiError> {
    let SqlBody { sql, params } = call.body;
    let params = s.limits.sql(&sql, &params)?;
    let out = s
        .storage
        .sql_exec(&call.turn, sql, params, s.limits.max_sql_result_bytes)
        .await?;
    Ok(axum::Json(out).into_response())
}

/// An object call: `{METHOD} /v1/objects/{class}/name|id/…`, routed like a client request, with
/// the calling turn's chain so that a call back into a busy caller is refused (508).
async fn object_call(State(s): State<Arc<ApiState>>, req: Request) -> Result<Response, ApiError> {
    // Without a token the call comes from no turn (work of the app between events): like a
    // client's request, it starts a chain of its own.
    let (chain, caller) = if req.headers().contains_key(protocol::TURN) {
        match turn_of(req.headers(), &s.turns)? {
            TurnKind::Object { chain, turn, .. } => (chain, Some(turn.id)),
            TurnKind::Stateless => (CallChain::default(), None),
        }
    } else {
        (CallChain::default(), None)
    };
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path()
        .strip_prefix("/v1")
        .unwrap_or(parts.uri.path())
        .to_owned();
    let query = parts.uri.query().map(str::to_owned);
    let target = parse_route(
        &parts.method,
        &path,
        query.as_deref(),
        s.router.slots,
        |c| s.router.knows_class(c),
    )?;
    let Target::Object { object, rest } = target else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "object calls are /v1/objects/{class}/name/{name}/… or /v1/objects/{class}/id/{id}/…",
        ));
    };
    let full = match &query {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    parts.uri = full
        .parse()
        .map_err(|_| ApiError::bad_request("invalid_path", "invalid object path"))?;
    let req = Request::from_parts(parts, body);
    // The caller's turn gives its concurrent-turn permit back while it waits on the callee.
    let call = s.router.object(object, rest, req, chain, 0);
    Ok(s.router.host.while_calling(caller, call).await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlarmSetBody {
    time_ms: i64,
}

async fn alarm_set(
    State(s): State<Arc<ApiState>>,
    call: Call<AlarmSetBody>,
) -> Result<Response, ApiError> {
    s.storage.alarm_set(&call.turn, call.body.time_ms).await?;
    Ok(axum::Json(json!({})).into_response())
}

async fn alarm_get(
    State(s): State<Arc<ApiState>>,
    call: Call<Empty>,
) -> Result<Response, ApiError> {
    let t = s.storage.alarm_get(&call.turn).await?;
    Ok(axum::Json(json!({ "time_ms": t })).into_response())
}

async fn alarm_delete(
    State(s): State<Arc<ApiState>>,
    call: Call<Empty>,
) -> Result<Response, ApiError> {
    let deleted = s.storage.alarm_delete(&call.turn).await?;
    Ok(axum::Json(json!({ "deleted": deleted })).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WsListBody {
    tag: Option<String>,
}

/// A message in a send or broadcast call: `"text"` or `"binary"` (base64), exactly one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WsSendBody {
    id: Option<String>,
    text: Option<String>,
    binary: Option<String>,
    tag: Option<String>,
    #[serde(default)]
    except: Vec<String>,
}

impl WsSendBody {
    fn message(&self) -> Result<WsMessage, ApiError> {
        WsMessage::from_app(self.text.clone(), self.binary.as_deref())
    }
}

async fn ws_list(
    State(s): State<Arc<ApiState>>,
    call: Call<WsListBody>,
) -> Result<Response, ApiError> {
    let sockets = s
        .sockets
        .list(&call.turn.object.key(), call.body.tag.as_deref());
    Ok(axum::Json(json!({ "sockets": sockets })).into_response())
}

async fn ws_send(
    State(s): State<Arc<ApiState>>,
    call: Call<WsSendBody>,
) -> Result<Response, ApiError> {
    let msg = call.body.message()?;
    let id = call
        .body
        .id
        .clone()
        .ok_or_else(|| ApiError::bad_request("bad_request", "send needs the socket \"id\""))?;
    let sent = s
        .sockets
        .count(&call.turn.object.key(), Some(&id), None, &[]);
    call.outbox.push(Outgoing::Send { id, msg });
    Ok(axum::Json(json!({ "sent": sent })).into_response())
}

async fn ws_broadcast(
    State(s): State<Arc<ApiState>>,
    call: Call<WsSendBody>,
) -> Result<Response, ApiError> {
    let msg = call.body.message()?;
    let WsSendBody { tag, except, .. } = call.body;
    let sent = s
        .sockets
        .count(&call.turn.object.key(), None, tag.as_deref(), &except);
    call.outbox.push(Outgoing::Broadcast { tag, except, msg });
    Ok(axum::Json(json!({ "sent": sent })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WsCloseBody {
    id: String,
    #[serde(default = "normal_close")]
    code: u16,
    #[serde(default)]
    reason: String,
}

fn normal_close() -> u16 {
    1000
}

async fn ws_close(
    State(s): State<Arc<ApiState>>,
    call: Call<WsCloseBody>,
) -> Result<Response, ApiError> {
    let WsCloseBody { id, code, reason } = call.body;
    check_close(code, &reason)?;
    let closed = s
        .sockets
        .count(&call.turn.object.key(), Some(&id), None, &[])
        > 0;
    call.outbox.push(Outgoing::Close { id, code, reason });
    Ok(axum::Json(json!({ "closed": closed })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WsAttachmentBody {
    id: String,
    attachment: Json,
}

async fn ws_attachment(
    State(s): State<Arc<ApiState>>,
    call: Call<WsAttachmentBody>,
) -> Result<Response, ApiError> {
    let WsAttachmentBody { id, attachment } = call.body;
    check_attachment(&attachment)?;
    if !s
        .sockets
        .set_attachment(&call.turn.object.key(), &id, attachment)
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_such_socket",
            format!("the object has no socket {id}"),
        ));
    }
    Ok(axum::Json(json!({})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AutoResponseBody {
    request: Option<String>,
    response: Option<String>,
}

async fn ws_auto_response(
    State(s): State<Arc<ApiState>>,
    call: Call<AutoResponseBody>,
) -> Result<Response, ApiError> {
    let pair = auto_response_pair(call.body.request, call.body.response)?;
    s.sockets.set_auto_response(&call.turn.object.key(), pair);
    Ok(axum::Json(json!({})).into_response())
}
