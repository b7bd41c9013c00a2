//! Calls to other durable objects, made during an event through the app API.

use std::fmt;

use bytes::Bytes;
use http::{HeaderValue, Method};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::client::ApiClient;
use crate::error::Result;
use crate::message::{Request, Response};

/// Everything but RFC 3986 unreserved characters is percent-encoded in a path segment, as the
/// sidecar does for `stead-object-name`.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// How another object is addressed: by name (its id is derived from the name and the class)
/// or by id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ObjectAddr {
    /// A name: 1 to 512 bytes of UTF-8, any characters (the SDK percent-encodes it).
    Name(String),
    /// An id: 64 lowercase hex characters.
    Id(String),
}

impl ObjectAddr {
    /// The object named `name`.
    pub fn name(name: impl Into<String>) -> Self {
        ObjectAddr::Name(name.into())
    }

    /// The object whose id is `id` (64 lowercase hex characters).
    pub fn id(id: impl Into<String>) -> Self {
        ObjectAddr::Id(id.into())
    }
}

impl fmt::Display for ObjectAddr {
    /// `name/{name}` or `id/{id}`, percent-encoded as in a URL path.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectAddr::Name(name) => write!(f, "name/{}", utf8_percent_encode(name, SEGMENT)),
            ObjectAddr::Id(id) => write!(f, "id/{}", utf8_percent_encode(id, SEGMENT)),
        }
    }
}

/// A handle on another durable object (or on this one's class), bound to the event being
/// handled: every call carries the event's turn token. Get one with [`Turn::stub`] or
/// [`StatelessContext::stub`]; it is cheap to build and to clone.
///
/// A call sends an ordinary HTTP request to the target object, which handles it as an event of
/// its own (its path is the one given here), and returns the target's answer as it is: status,
/// headers and body. So an `Ok` answer may have any status. Besides the target's own answers,
/// the sidecar answers with its JSON error body when it cannot deliver the call, notably:
///
/// | status | code | when |
/// |---|---|---|
/// | 508 | `call_cycle` | the target is busy earlier in the same call chain (a → b → a): the call is refused instead of deadlocking |
/// | 503 | `shard_unavailable` | the target's shard is unreachable (with `Retry-After`) |
/// | 404 | `unknown_class` | no such class |
/// | 400 | `invalid_name`, `invalid_id` | the address is malformed |
/// | 410 | `turn_finished` | the caller's turn already ended |
///
/// The target's turn is its own transaction: it commits or rolls back by its own answer, and
/// whatever this event does afterwards does not undo it (nor does the target's rollback undo
/// this event's writes).
///
/// [`Turn::stub`]: crate::Turn::stub
/// [`StatelessContext::stub`]: crate::StatelessContext::stub
///
/// ```no_run
/// use stead_sdk::{ObjectAddr, Request, Response, Result, Turn, response};
/// use stead_sdk::http::StatusCode;
///
/// async fn transfer(turn: &Turn, to: &str) -> Result<Response> {
///     let account = turn.stub("Account", ObjectAddr::name(to));
///     let res = account.post("/deposit?amount=10", "").await?;
///     if res.status() == StatusCode::LOOP_DETECTED {
///         return Ok(response::error(res.status(), "cycle", "the account is calling us"));
///     }
///     Ok(res) // the account's answer, passed on as it is
/// }
/// ```
#[derive(Clone)]
pub struct ObjectStub {
    api: ApiClient,
    token: HeaderValue,
    class: String,
    addr: ObjectAddr,
}

impl fmt::Debug for ObjectStub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStub")
            .field("class", &self.class)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ObjectStub {
    pub(crate) fn new(api: ApiClient, token: HeaderValue, class: &str, addr: ObjectAddr) -> Self {
        Self {
            api,
            token,
            class: class.to_owned(),
            addr,
        }
    }

    /// The target's class.
    pub fn class(&self) -> &str {
        &self.class
    }

    /// The target's address.
    pub fn addr(&self) -> &ObjectAddr {
        &self.addr
    }

    /// Sends `req` to the object and returns its answer, whatever the status.
    ///
    /// The request's method, headers, path, query string and body go to the object as they are,
    /// except `stead-*` headers (the sidecar sets those) and connection headers such as `host`
    /// and `content-length`. Only the path and query of the request's URI are used, so an
    /// incoming request can be forwarded unchanged.
    ///
    /// The answer keeps its status, headers and body, less connection headers and `stead-*`
    /// headers (so that passing it on as this event's answer cannot carry the target's
    /// `stead-rollback` along).
    ///
    /// `Err` means the call could not be made: the app API is unreachable or the connection
    /// failed ([`Error::Transport`](crate::Error::Transport)), or the path is not valid in a
    /// URI ([`Error::Protocol`](crate::Error::Protocol)).
    ///
    /// ```no_run
    /// # async fn f(turn: &stead_sdk::Turn) -> stead_sdk::Result<()> {
    /// use stead_sdk::{ObjectAddr, http};
    /// let req = http::Request::builder()
    ///     .method(http::Method::PUT)
    ///     .uri("/profile")
    ///     .header("content-type", "application/json")
    ///     .body(r#"{"nick":"al"}"#.into())
    ///     .map_err(stead_sdk::Error::other)?;
    /// let res = turn.stub("User", ObjectAddr::name("alice")).fetch(req).await?;
    /// println!("{} {:?}", res.status(), res.body());
    /// # Ok(()) }
    /// ```
    pub async fn fetch(&self, req: Request) -> Result<Response> {
        let rest = req
            .uri()
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        let rest = rest.strip_prefix('/').unwrap_or(rest);
        let path = format!(
            "objects/{}/{}/{rest}",
            utf8_percent_encode(&self.class, SEGMENT),
            self.addr
        );
        self.api.send(&self.token, &path, req).await
    }

    /// `GET path` (query string allowed) on the object; see [`fetch`](Self::fetch).
    ///
    /// ```no_run
    /// # async fn f(turn: &stead_sdk::Turn) -> stead_sdk::Result<()> {
    /// use stead_sdk::ObjectAddr;
    /// let res = turn.stub("Counter", ObjectAddr::name("b")).get("/value").await?;
    /// let value = String::from_utf8_lossy(res.body());
    /// # Ok(()) }
    /// ```
    pub async fn get(&self, path: &str) -> Result<Response> {
        self.fetch(request(Method::GET, path, Bytes::new())?).await
    }

    /// `POST path` (query string allowed) with `body` on the object; see [`fetch`](Self::fetch).
    ///
    /// ```no_run
    /// # async fn f(turn: &stead_sdk::Turn) -> stead_sdk::Result<()> {
    /// use stead_sdk::ObjectAddr;
    /// let res = turn.stub("Counter", ObjectAddr::name("b")).post("/increment", "").await?;
    /// # Ok(()) }
    /// ```
    pub async fn post(&self, path: &str, body: impl Into<Bytes>) -> Result<Response> {
        self.fetch(request(Method::POST, path, body.into())?).await
    }
}

fn request(method: Method, path: &str, body: Bytes) -> Result<Request> {
    let uri = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    http::Request::builder()
        .method(method)
        .uri(uri)
        .body(body)
        .map_err(|e| crate::Error::Protocol(format!("{path:?} is not a valid request path: {e}")))
}
