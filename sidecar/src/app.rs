//! Delivering events to the app over keep-alive HTTP/1.1 connections.

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Uri, Version};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use stead_core::{EventKind, protocol};

use crate::object::ObjectRef;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Shown to clients: the address and the cause stay in the sidecar's log.
    #[error("the app did not answer")]
    Unreachable { addr: String, reason: String },
    #[error("the app's answer is larger than {limit} bytes")]
    AnswerTooLarge { limit: usize },
    #[error("invalid request for the app: {0}")]
    InvalidRequest(String),
}

/// The app as the object host sees it: where events go and answers come from. The seam that lets
/// the turn pipeline be tested in-process against a fake app.
pub trait App: Send + Sync + 'static {
    /// Delivers one event and reads its whole answer.
    fn send(&self, req: Request<Bytes>) -> BoxFuture<'static, Result<Response<Bytes>, AppError>>;
}

impl App for AppClient {
    fn send(&self, req: Request<Bytes>) -> BoxFuture<'static, Result<Response<Bytes>, AppError>> {
        let client = self.clone();
        Box::pin(async move { client.send(req).await })
    }
}

/// Tells the app that an object was closed, so it can drop the in-memory instance. Best effort:
/// the incarnation header covers a lost notice.
pub async fn hibernate(app: &dyn App, object: &ObjectRef, incarnation: &str) {
    let mut req = Request::new(Bytes::new());
    *req.method_mut() = http::Method::POST;
    set_object_headers(req.headers_mut(), EventKind::Hibernate, object, incarnation);
    if let Err(e) = app.send(req).await {
        tracing::debug!(error = %e, "hibernate notice not delivered");
    }
}

/// The app's address: `host:port` over TCP, or `unix:/path` for a Unix domain socket (faster
/// where both ends can share a folder: `stead dev`, or an `emptyDir` shared by the containers
/// of a pod; see docs/benchmarks.md, "The sidecar-app hop").
#[derive(Clone)]
pub struct AppClient {
    client: Transport,
    addr: String,
    max_answer_bytes: usize,
}

#[derive(Clone)]
enum Transport {
    Tcp(Client<HttpConnector, Full<Bytes>>),
    Unix(Client<unix::Connector, Full<Bytes>>),
}

/// The prefix of an app address that names a Unix domain socket.
pub const UNIX_PREFIX: &str = "unix:";

/// Headers that describe one connection, not the message: never passed between connections.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes every `stead-*` header: clients cannot forge what the sidecar sets.
pub fn strip_stead_headers(headers: &mut HeaderMap) {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| protocol::is_reserved_header(k.as_str()))
        .cloned()
        .collect();
    for k in doomed {
        headers.remove(k);
    }
}

/// Removes hop-by-hop headers, and every `stead-*` header when `strip_stead` is set.
pub fn clean_headers(headers: &mut HeaderMap, strip_stead: bool) {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            HOP_BY_HOP.contains(&k.as_str())
                || (strip_stead && protocol::is_reserved_header(k.as_str()))
        })
        .cloned()
        .collect();
    for k in doomed {
        headers.remove(k);
    }
}

impl AppClient {
    pub fn new(addr: String, max_answer_bytes: usize) -> Self {
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(1024);
        let client = match addr.strip_prefix(UNIX_PREFIX) {
            Some(path) => Transport::Unix(builder.build(unix::Connector::new(path.into()))),
            None => {
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                Transport::Tcp(builder.build(connector))
            }
        };
        Self {
            client,
            addr,
            max_answer_bytes,
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The app failed to answer: the details are logged here, the error shown to clients
    /// names neither the address nor the cause.
    fn unreachable(&self, reason: String) -> AppError {
        tracing::warn!(app = %self.addr, %reason, "the app did not answer");
        AppError::Unreachable {
            addr: self.addr.clone(),
            reason,
        }
    }

    /// Sends one event and reads the whole answer (the turn ends when the answer is complete).
    pub async fn send(&self, mut req: Request<Bytes>) -> Result<Response<Bytes>, AppError> {
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        // Over a Unix socket the authority only names the connection pool.
        let authority = match &self.client {
            Transport::Tcp(_) => self.addr.as_str(),
            Transport::Unix(_) => "app",
        };
        *req.uri_mut() = Uri::try_from(format!("http://{authority}{path}"))
            .map_err(|e| AppError::InvalidRequest(e.to_string()))?;
        // The app speaks HTTP/1.1 whatever the client spoke (an HTTP/2 request keeps its
        // version otherwise, and the HTTP/1 client refuses it).
        *req.version_mut() = Version::HTTP_11;
        let req = req.map(Full::new);
        let resp = match &self.client {
            Transport::Tcp(c) => c.request(req).await,
            Transport::Unix(c) => c.request(req).await,
        }
        .map_err(|e| self.unreachable(error_chain(&e)))?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, self.max_answer_bytes)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    AppError::AnswerTooLarge {
                        limit: self.max_answer_bytes,
                    }
                } else {
                    self.unreachable(e.to_string())
                }
            })?
            .to_bytes();
        Ok(Response::from_parts(parts, body))
    }
}

/// The `stead-*` headers of an object event.
pub fn set_object_headers(
    headers: &mut HeaderMap,
    kind: EventKind,
    object: &ObjectRef,
    incarnation: &str,
) {
    let put = |h: &mut HeaderMap, name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    };
    put(headers, protocol::EVENT, kind.as_str());
    put(headers, protocol::CLASS, object.class.as_str());
    put(headers, protocol::OBJECT_ID, &object.id.to_hex());
    put(headers, protocol::INCARNATION, incarnation);
    if let Some(name) = &object.name {
        let encoded = percent_encoding::utf8_percent_encode(name.as_str(), NAME_ENCODE).to_string();
        put(headers, protocol::OBJECT_NAME, &encoded);
    }
}

/// Everything but RFC 3986 unreserved characters is percent-encoded in `stead-object-name`.
const NAME_ENCODE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// Connections to the app over a Unix domain socket, for hyper's pooled client.
mod unix {
    use std::path::PathBuf;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use futures_util::future::BoxFuture;
    use http::Uri;
    use hyper_util::client::legacy::connect::{Connected, Connection};
    use hyper_util::rt::TokioIo;
    use tokio::net::UnixStream;

    #[derive(Clone)]
    pub struct Connector(Arc<PathBuf>);

    impl Connector {
        pub fn new(path: PathBuf) -> Self {
            Self(Arc::new(path))
        }
    }

    impl tower::Service<Uri> for Connector {
        type Response = Stream;
        type Error = std::io::Error;
        type Future = BoxFuture<'static, Result<Stream, std::io::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Uri) -> Self::Future {
            let path = self.0.clone();
            Box::pin(async move { Ok(Stream(TokioIo::new(UnixStream::connect(&*path).await?))) })
        }
    }

    pub struct Stream(TokioIo<UnixStream>);

    impl Connection for Stream {
        fn connected(&self) -> Connected {
            Connected::new()
        }
    }

    impl hyper::rt::Read for Stream {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: hyper::rt::ReadBufCursor<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl hyper::rt::Write for Stream {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }
}
