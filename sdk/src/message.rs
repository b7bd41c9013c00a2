//! Requests and responses as the app sees them, and helpers to build answers.
//!
//! Both are plain [`http`] types with the whole body in memory as [`Bytes`].

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use percent_encoding::percent_decode_str;
use serde::Serialize;
use stead_core::ErrorBody;

/// An event's HTTP request, body included. The path is what follows
/// `/objects/{class}/name/{name}` (or `/id/{id}`) in the client's URL, query string kept.
pub type Request = http::Request<Bytes>;

/// The app's answer to an event.
pub type Response = http::Response<Bytes>;

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

fn with_body(status: StatusCode, content_type: &'static str, body: Bytes) -> Response {
    let mut res = http::Response::new(body);
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

/// `200 OK` with a `text/plain` body.
///
/// ```
/// let res = stead_sdk::response::text("hello");
/// assert_eq!(res.status(), 200);
/// assert_eq!(res.body().as_ref(), b"hello");
/// ```
pub fn text(body: impl Into<String>) -> Response {
    with_body(StatusCode::OK, TEXT, Bytes::from(body.into()))
}

/// `200 OK` with the JSON of `value`. If `value` cannot be serialized the answer is a `500`
/// JSON error instead.
///
/// ```
/// let res = stead_sdk::response::json(&serde_json::json!({"n": 1}));
/// assert_eq!(res.body().as_ref(), br#"{"n":1}"#);
/// ```
pub fn json<T: Serialize + ?Sized>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => with_body(StatusCode::OK, JSON, Bytes::from(body)),
        Err(e) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "json_error",
            &format!("the answer could not be serialized: {e}"),
        ),
    }
}

/// An answer with `status` and an empty body.
///
/// ```
/// use stead_sdk::http::StatusCode;
/// let res = stead_sdk::response::status(StatusCode::NO_CONTENT);
/// assert_eq!(res.status(), 204);
/// ```
pub fn status(status: StatusCode) -> Response {
    let mut res = http::Response::new(Bytes::new());
    *res.status_mut() = status;
    res
}

/// An answer with `status` and Stead's JSON error body `{"error": {"code", "message"}}`.
///
/// ```
/// use stead_sdk::http::StatusCode;
/// let res = stead_sdk::response::error(StatusCode::NOT_FOUND, "not_found", "no such room");
/// assert_eq!(res.status(), 404);
/// ```
pub fn error(status: StatusCode, code: &str, message: &str) -> Response {
    error_response(status, code, message)
}

pub(crate) fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    with_body(
        status,
        JSON,
        Bytes::from(ErrorBody::new(code, message).to_json()),
    )
}

/// Builder-style additions to [`Response`].
pub trait ResponseExt: Sized {
    /// Replaces the status.
    ///
    /// ```
    /// use stead_sdk::{ResponseExt, http::StatusCode, response};
    /// let res = response::text("made").with_status(StatusCode::CREATED);
    /// assert_eq!(res.status(), 201);
    /// ```
    fn with_status(self, status: StatusCode) -> Self;

    /// Sets a header; a value that is not a valid header value is left out.
    fn with_header(self, name: http::HeaderName, value: &str) -> Self;

    /// Marks the answer with `stead-rollback: 1`: the sidecar rolls back every write of the turn
    /// whatever the status, and still sends this answer to the client.
    ///
    /// ```
    /// use stead_sdk::{ResponseExt, http::StatusCode, response};
    /// let res = response::text("nothing changed").with_status(StatusCode::CONFLICT).rollback();
    /// assert_eq!(res.headers()["stead-rollback"], "1");
    /// ```
    fn rollback(self) -> Self;
}

impl ResponseExt for Response {
    fn with_status(mut self, status: StatusCode) -> Self {
        *self.status_mut() = status;
        self
    }

    fn with_header(mut self, name: http::HeaderName, value: &str) -> Self {
        if let Ok(value) = HeaderValue::from_str(value) {
            self.headers_mut().insert(name, value);
        }
        self
    }

    fn rollback(mut self) -> Self {
        self.headers_mut().insert(
            http::HeaderName::from_static(stead_core::protocol::ROLLBACK),
            HeaderValue::from_static("1"),
        );
        self
    }
}

/// Reading what clients send.
pub trait RequestExt {
    /// The first value of query parameter `name`, percent-decoded (`+` is a space). `None` if
    /// it is absent or not UTF-8.
    ///
    /// ```
    /// use stead_sdk::{Request, RequestExt};
    /// let req: Request = stead_sdk::http::Request::builder()
    ///     .uri("/sleep?ms=250&note=a+b%21")
    ///     .body(Default::default())
    ///     .unwrap();
    /// assert_eq!(req.query_param("ms").as_deref(), Some("250"));
    /// assert_eq!(req.query_param("note").as_deref(), Some("a b!"));
    /// assert_eq!(req.query_param("other"), None);
    /// ```
    fn query_param(&self, name: &str) -> Option<String>;

    /// Every query parameter, decoded, in order. Pairs that are not UTF-8 are left out.
    fn query_pairs(&self) -> Vec<(String, String)>;

    /// The body parsed as JSON.
    fn json<T: serde::de::DeserializeOwned>(&self) -> crate::Result<T>;

    /// The object whose turn made this request, when it is an object call (`stead-caller`);
    /// `None` for client requests, front-door calls, alarms and WebSocket events. Clients
    /// cannot forge it, so an object can accept some requests only from its peers.
    ///
    /// ```
    /// use stead_sdk::{Request, RequestExt};
    /// let id = "ab".repeat(32);
    /// let req: Request = stead_sdk::http::Request::builder()
    ///     .header("stead-caller", format!("GameRoom/{id}"))
    ///     .body(Default::default())
    ///     .unwrap();
    /// let caller = req.caller().unwrap();
    /// assert_eq!((caller.class.as_str(), caller.id.as_str()), ("GameRoom", id.as_str()));
    /// assert!(Request::default().caller().is_none());
    /// ```
    fn caller(&self) -> Option<Caller>;

    /// The IP address of the client whose request (or WebSocket handshake) this is, as the
    /// ingress saw its connection (`stead-client-addr`, kept across shards); `None` for object
    /// calls, alarms and other events that no client sent. Cloudflare's `CF-Connecting-IP`.
    ///
    /// ```
    /// use stead_sdk::{Request, RequestExt};
    /// let req: Request = stead_sdk::http::Request::builder()
    ///     .header("stead-client-addr", "192.0.2.7")
    ///     .body(Default::default())
    ///     .unwrap();
    /// assert_eq!(req.client_addr(), Some("192.0.2.7".parse().unwrap()));
    /// assert!(Request::default().client_addr().is_none());
    /// ```
    fn client_addr(&self) -> Option<std::net::IpAddr>;
}

/// The object that made an object call: see [`RequestExt::caller`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The calling object's class.
    pub class: String,
    /// The calling object's id, 64 lowercase hex characters.
    pub id: String,
}

impl Caller {
    /// Whether the caller is the object of `class` named `name`.
    pub fn is_named(&self, class: &str, name: &str) -> bool {
        let (Ok(c), Ok(n)) = (
            stead_core::ClassName::new(class),
            stead_core::ObjectName::new(name),
        ) else {
            return false;
        };
        self.class == class && stead_core::ObjectId::named(&c, &n).to_hex() == self.id
    }
}

fn decode_component(s: &str) -> Option<String> {
    let s = s.replace('+', " ");
    percent_decode_str(&s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

impl RequestExt for Request {
    fn query_param(&self, name: &str) -> Option<String> {
        let query = self.uri().query()?;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode_component(k)? == name).then(|| decode_component(v))?
        })
    }

    fn query_pairs(&self) -> Vec<(String, String)> {
        let Some(query) = self.uri().query() else {
            return Vec::new();
        };
        query
            .split('&')
            .filter(|p| !p.is_empty())
            .filter_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                Some((decode_component(k)?, decode_component(v)?))
            })
            .collect()
    }

    fn json<T: serde::de::DeserializeOwned>(&self) -> crate::Result<T> {
        Ok(serde_json::from_slice(self.body())?)
    }

    fn client_addr(&self) -> Option<std::net::IpAddr> {
        self.headers()
            .get(stead_core::protocol::CLIENT_ADDR)?
            .to_str()
            .ok()?
            .parse()
            .ok()
    }

    fn caller(&self) -> Option<Caller> {
        let value = self
            .headers()
            .get(stead_core::protocol::CALLER)?
            .to_str()
            .ok()?;
        let (class, id) = value.split_once('/')?;
        stead_core::ClassName::new(class).ok()?;
        stead_core::ObjectId::parse(id).ok()?;
        Some(Caller {
            class: class.to_owned(),
            id: id.to_owned(),
        })
    }
}
