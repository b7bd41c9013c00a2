//! The client-facing port: parses object routes, strips `stead-*` headers, and hands requests to
//! the object host or, outside `/objects/`, to the app's stateless front door.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::BodyExt;
use stead_core::{ClassName, ObjectId, ObjectName, protocol};

use crate::app::{AppClient, clean_headers, strip_stead_headers};
use crate::chain::CallChain;
use crate::error::ApiError;
use crate::metrics::{ClassLabels, Metrics, RequestLabels};
use crate::object::ObjectRef;
use crate::route::ObjectRouter;
use crate::turn::Turns;

pub struct Ingress {
    pub router: Arc<ObjectRouter>,
    pub app: AppClient,
    pub turns: Arc<Turns>,
    pub metrics: Metrics,
}

/// What a client path asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    /// `/objects/{class}/name|id/{…}/{rest…}`: `rest` is the path (and query) the app sees.
    Object { object: ObjectRef, rest: String },
    /// `POST /objects/{class}/new-id`
    NewId { class: ClassName },
    /// Anything outside `/objects/`.
    Stateless,
}

/// Parses a request target. `known` decides whether a class exists.
pub fn parse_route(
    method: &Method,
    path: &str,
    query: Option<&str>,
    slots: u32,
    known: impl Fn(&str) -> bool,
) -> Result<Target, ApiError> {
    let Some(tail) = path.strip_prefix("/objects/") else {
        return Ok(Target::Stateless);
    };
    let mut parts = tail.splitn(4, '/');
    let class_raw = decode(parts.next().unwrap_or(""))?;
    let class = ClassName::new(&class_raw)
        .map_err(|e| ApiError::bad_request("invalid_class", e.to_string()))?;
    if !known(class.as_str()) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_class",
            format!("this namespace has no class {class}"),
        ));
    }
    let how = parts.next().unwrap_or("");
    if how == "new-id" && parts.next().is_none() {
        if method != Method::POST {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "new-id takes POST",
            ));
        }
        return Ok(Target::NewId { class });
    }
    let key = decode(parts.next().unwrap_or(""))?;
    let rest_path = parts.next().unwrap_or("");
    let (id, name) = match how {
        "name" => {
            let name = ObjectName::new(&key)
                .map_err(|e| ApiError::bad_request("invalid_name", e.to_string()))?;
            (ObjectId::named(&class, &name), Some(name))
        }
        "id" => (
            ObjectId::parse(&key)
                .map_err(|e| ApiError::bad_request("invalid_id", e.to_string()))?,
            None,
        ),
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "object routes are /objects/{class}/name/{name}/…, /objects/{class}/id/{id}/… and POST /objects/{class}/new-id",
            ));
        }
    };
    let mut rest = format!("/{rest_path}");
    if let Some(q) = query {
        rest.push('?');
        rest.push_str(q);
    }
    Ok(Target::Object {
        object: ObjectRef::new(class, id, name, slots),
        rest,
    })
}

fn decode(segment: &str) -> Result<String, ApiError> {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ApiError::bad_request("invalid_path", "path segment is not valid UTF-8"))
}

/// Reads a whole client body. A declared length over `limit` is refused with 413 before a
/// byte is read, and so is a body that grows past it; a body that stops arriving for
/// `timeout` gets 408; a malformed one (a bad chunk size) gets 400.
pub async fn read_body(body: Body, limit: usize, timeout: Duration) -> Result<Bytes, ApiError> {
    refuse_declared_length(&body, limit)?;
    let too_large = || {
        ApiError::too_large(
            "body_too_large",
            format!("request bodies are limited to {limit} bytes"),
        )
    };
    let mut body = body;
    let mut buf = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout(timeout, body.frame()).await {
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    format!(
                        "the request body stopped arriving ({} s without data); send it whole and without pauses",
                        timeout.as_secs_f64()
                    ),
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(_))) => {
                return Err(ApiError::bad_request(
                    "malformed_body",
                    "the request body is malformed (bad chunked encoding) or ended early",
                ));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Refuses (413) a body whose declared `Content-Length` is over `limit`, without reading it.
pub fn refuse_declared_length(body: &Body, limit: usize) -> Result<(), ApiError> {
    let declared = hyper::body::Body::size_hint(body).lower();
    if declared > limit as u64 {
        return Err(ApiError::too_large(
            "body_too_large",
            format!(
                "the request body is {declared} bytes; request bodies are limited to {limit} bytes"
            ),
        ));
    }
    Ok(())
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
    async fn route(&self, req: Request) -> (String, Response) {
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
            Target::Stateless => {
                let path = req
                    .uri()
                    .path_and_query()
                    .map_or("/".to_owned(), |p| p.as_str().to_owned());
                let req = match self.buffer(req, &path).await {
                    Ok(r) => r,
                    Err(e) => return ("-".into(), e.into_response()),
                };
                ("-".into(), self.stateless(req).await.map(Body::from))
            }
        }
    }

    /// Reads the whole body (a turn never waits on a slow client) and cleans the headers.
    async fn buffer(&self, req: Request, path: &str) -> Result<http::Request<Bytes>, ApiError> {
        let (mut parts, body) = req.into_parts();
        let body = read_body(
            body,
            self.router.max_request_bytes,
            self.router.body_timeout,
        )
        .await?;
        clean_headers(&mut parts.headers, true);
        parts.uri = path
            .parse()
            .map_err(|_| ApiError::bad_request("invalid_path", "invalid path"))?;
        Ok(http::Request::from_parts(parts, body))
    }

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
            Ok(mut r) => {
                clean_headers(r.headers_mut(), true);
                r
            }
            Err(e) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "app_failed", e.to_string()).into_http()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(method: Method, path: &str) -> Result<Target, ApiError> {
        parse_route(&method, path, Some("x=1"), 4096, |c| c == "Counter")
    }

    #[test]
    fn named_route_strips_the_prefix_and_keeps_the_query() {
        match parse(Method::POST, "/objects/Counter/name/a%2Fb/increment").unwrap() {
            Target::Object { object, rest } => {
                assert_eq!(object.name.unwrap().as_str(), "a/b");
                assert_eq!(rest, "/increment?x=1");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn id_route_parses_the_hex_id() {
        let id = ObjectId::unique().unwrap();
        match parse(Method::GET, &format!("/objects/Counter/id/{id}")).unwrap() {
            Target::Object { object, rest } => {
                assert_eq!(object.id, id);
                assert!(object.name.is_none());
                assert_eq!(rest, "/?x=1");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_routes_get_the_right_status() {
        let status = |m, p| parse(m, p).unwrap_err().status;
        assert_eq!(
            status(Method::GET, "/objects/Nope/name/a/x"),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status(Method::GET, "/objects/Counter/id/xyz/x"),
            StatusCode::BAD_REQUEST
        );
        let long = format!("/objects/Counter/name/{}/x", "a".repeat(513));
        assert_eq!(status(Method::GET, &long), StatusCode::BAD_REQUEST);
        assert_eq!(
            status(Method::GET, "/objects/Counter/name//x"),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(Method::GET, "/objects/Counter/new-id"),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            status(Method::GET, "/objects/Counter/what/a"),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn outside_objects_is_stateless() {
        assert_eq!(parse(Method::GET, "/").unwrap(), Target::Stateless);
        assert!(matches!(
            parse(Method::POST, "/objects/Counter/new-id").unwrap(),
            Target::NewId { .. }
        ));
    }
}
