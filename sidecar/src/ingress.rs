//! The client-facing port: parses object routes, strips `stead-*` headers, and hands requests to
//! the object host or, outside `/objects/`, to the app's stateless front door.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use stead_core::{ObjectId, protocol};

use crate::app::{AppClient, clean_headers, strip_stead_headers};
use crate::body::Held;
use crate::chain::CallChain;
use crate::client::ClientAddr;
use crate::error::ApiError;
use crate::metrics::{ClassLabels, Metrics, RequestLabels};
use crate::route::ObjectRouter;
use crate::target::{Target, parse_route};
use crate::turn::Turns;
use crate::websocket::connection::is_upgrade;

pub struct Ingress {
    pub router: Arc<ObjectRouter>,
    pub app: AppClient,
    pub turns: Arc<Turns>,
    pub metrics: Metrics,
}

pub async fn handle(State(ingress): State<Arc<Ingress>>, req: Request) -> Response {
    let started = Instant::now();
    let (class_label, resp) = ingress.route(req).await;
    let status = resp.status().as_u16();
    ingress
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            class: class_label.clone(),
            code: status,
        })
        .inc();
    ingress
        .metrics
        .request_seconds
        .get_or_create(&ClassLabels { class: class_label })
        .observe(started.elapsed().as_secs_f64());
    resp
}

impl Ingress {
    async fn route(&self, mut req: Request) -> (String, Response) {
        if let Some(client) = ClientAddr::of_connection(req.extensions()) {
            req.extensions_mut().insert(client);
        }
        let route = parse_route(
            req.method(),
            req.uri().path(),
            req.uri().query(),
            self.router.slots,
            |c| self.router.knows_class(c),
        );
        let route = match route {
            Ok(r) => r,
            Err(e) => return ("-".into(), e.into_response()),
        };
        match route {
            Target::NewId { class } => {
                let resp = match ObjectId::unique() {
                    Ok(id) => {
                        let mut r = http::Response::new(Bytes::from(
                            serde_json::json!({"id": id.to_hex()}).to_string(),
                        ));
                        r.headers_mut().insert(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("application/json"),
                        );
                        r
                    }
                    Err(e) => ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        format!("no randomness for a new id: {e}"),
                    )
                    .into_http(),
                };
                (class.to_string(), resp.map(Body::from))
            }
            Target::Object { object, rest } => {
                let class = object.class.to_string();
                let mut req = req;
                // Hop-by-hop headers stay for now: a WebSocket handshake needs them.
                strip_stead_headers(req.headers_mut());
                let resp = self
                    .router
                    .object(object, rest, req, CallChain::default(), 0)
                    .await;
                (class, resp)
            }
            Target::Stateless if is_upgrade(&req) => self.front_upgrade(req).await,
            Target::Stateless => {
                let path = req
                    .uri()
                    .path_and_query()
                    .map_or("/".to_owned(), |p| p.as_str().to_owned());
                let (req, _held) = match self.buffer(req, &path).await {
                    Ok(r) => r,
                    Err(e) => return ("-".into(), e.into_response()),
                };
                let mut resp = self.stateless(req).await;
                clean_headers(resp.headers_mut(), true);
                ("-".into(), resp.map(Body::from))
            }
        }
    }

    /// A WebSocket handshake outside `/objects/`: the front door decides in a request event
    /// marked `stead-upgrade: websocket`. An answer naming an object route in `stead-upgrade-to`
    /// hands the handshake to that object exactly as if the client had asked the route; any other
    /// answer goes to the client as it is.
    async fn front_upgrade(&self, req: Request) -> (String, Response) {
        let (mut parts, _body) = req.into_parts();
        strip_stead_headers(&mut parts.headers);
        let mut event = http::Request::new(Bytes::new());
        *event.method_mut() = parts.method.clone();
        // The app gets path and query only, as on every stateless event.
        *event.uri_mut() = match parts.uri.path_and_query() {
            Some(p) => match p.as_str().parse() {
                Ok(u) => u,
                Err(_) => {
                    let e = ApiError::bad_request("invalid_path", "invalid path");
                    return ("-".into(), e.into_response());
                }
            },
            None => http::Uri::from_static("/"),
        };
        *event.headers_mut() = parts.headers.clone();
        clean_headers(event.headers_mut(), true);
        ClientAddr::set_header(event.headers_mut(), &parts.extensions);
        event
            .headers_mut()
            .insert(protocol::UPGRADE, HeaderValue::from_static("websocket"));
        let mut answer = self.stateless(event).await;
        let to = answer.headers_mut().remove(protocol::UPGRADE_TO);
        clean_headers(answer.headers_mut(), true);
        let Some(to) = to else {
            return ("-".into(), answer.map(Body::from));
        };
        let (object, rest, uri) = match self.upgrade_target(answer.status(), &to) {
            Ok(t) => t,
            Err(e) => return ("-".into(), e.into_response()),
        };
        parts.uri = uri;
        let class = object.class.to_string();
        let req = Request::from_parts(parts, Body::empty());
        let resp = self
            .router
            .object(object, rest, req, CallChain::default(), 0)
            .await;
        (class, resp)
    }

    /// The object route a front door's `stead-upgrade-to` names. A bad one is the app's mistake.
    fn upgrade_target(
        &self,
        status: StatusCode,
        to: &HeaderValue,
    ) -> Result<(crate::object::ObjectRef, String, http::Uri), ApiError> {
        let bad = |why: String| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "app_failed",
                format!("the front door's stead-upgrade-to {why}"),
            )
        };
        if !status.is_success() {
            return Err(bad(format!(
                "came with status {status}; it needs a 2xx answer"
            )));
        }
        let uri: http::Uri = to
            .to_str()
            .ok()
            .and_then(|t| t.parse().ok())
            .filter(|u: &http::Uri| u.scheme().is_none() && u.authority().is_none())
            .ok_or_else(|| bad("is not a path".into()))?;
        match parse_route(
            &Method::GET,
            uri.path(),
            uri.query(),
            self.router.slots,
            |c| self.router.knows_class(c),
        ) {
            Ok(Target::Object { object, rest }) => Ok((object, rest, uri)),
            Ok(_) => Err(bad(
                "must name an object route: /objects/{class}/name/{name}/… or /objects/{class}/id/{id}/…".into(),
            )),
            Err(e) => Err(bad(format!("is refused: {}", e.message))),
        }
    }

    /// Reads the whole body (a turn never waits on a slow client), within the body budget, and
    /// cleans the headers; the body's share of the budget comes along, to hold until answered.
    async fn buffer(
        &self,
        req: Request,
        path: &str,
    ) -> Result<(http::Request<Bytes>, Held), ApiError> {
        let (mut parts, body) = req.into_parts();
        let (body, held) = self
            .router
            .body_budget
            .read(
                body,
                self.router.max_request_bytes,
                self.router.body_timeout,
            )
            .await?;
        clean_headers(&mut parts.headers, true);
        ClientAddr::set_header(&mut parts.headers, &parts.extensions);
        parts.uri = path
            .parse()
            .map_err(|_| ApiError::bad_request("invalid_path", "invalid path"))?;
        Ok((http::Request::from_parts(parts, body), held))
    }

    /// One stateless event; the answer's headers are the caller's to clean.
    async fn stateless(&self, mut req: http::Request<Bytes>) -> http::Response<Bytes> {
        let (id, token) = match self.turns.begin_stateless() {
            Ok(t) => t,
            Err(e) => {
                return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
                    .into_http();
            }
        };
        req.headers_mut().insert(
            protocol::EVENT,
            HeaderValue::from_static(stead_core::EventKind::Request.as_str()),
        );
        if let Ok(v) = HeaderValue::from_str(&token) {
            req.headers_mut().insert(protocol::TURN, v);
        }
        let resp = self.app.send(req).await;
        self.turns.end(id);
        match resp {
            Ok(r) => r,
            Err(e) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "app_failed", e.to_string()).into_http()
            }
        }
    }
}
