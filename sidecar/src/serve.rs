//! The connection-serving layer of the ingress, admin and peer ports: our own accept loop
//! (HTTP/1.1 and HTTP/2 through hyper-util's `auto` builder) with a bound on open connections,
//! header and keep-alive timeouts, and the checks every request passes before a handler sees it
//! (origin-form target, URI and header size). Descriptors beyond the bounds stay in reserve for
//! storage, the app and health.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Version, header};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use stead_core::ErrorBody;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::error::ApiError;
use crate::metrics::{Metrics, PortLabels};

fn duration(s: &str) -> Result<Duration, String> {
    stead_core::parse_duration(s).map_err(|e| e.to_string())
}

/// Timeouts and bounds of client connections (flags of `stead sidecar`).
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionLimits {
    /// A connection with no request in flight must deliver a whole request head within this
    /// time of opening, or of the first byte of that head; else it is closed.
    #[arg(long, env = "STEAD_HEADER_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub header_timeout: Duration,
    /// Close a keep-alive connection that sends nothing for this long after its last answer.
    #[arg(long, env = "STEAD_KEEPALIVE_TIMEOUT", default_value = "75s", value_parser = duration)]
    pub keepalive_timeout: Duration,
    /// Answer 408 and close the connection when a request body makes no progress for this long.
    #[arg(long, env = "STEAD_BODY_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub body_timeout: Duration,
    /// Most open connections on the ingress; 0 computes it from the descriptor limit
    /// (RLIMIT_NOFILE), keeping descriptors in reserve for storage, the app and health.
    #[arg(long, env = "STEAD_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,
    /// Longest request target (path and query), in bytes; longer gets 414.
    #[arg(long, env = "STEAD_MAX_URI_BYTES", default_value_t = 8 << 10)]
    pub max_uri_bytes: usize,
    /// Most bytes of request headers (names plus values); more gets 431.
    #[arg(long, env = "STEAD_MAX_HEADER_BYTES", default_value_t = 32 << 10)]
    pub max_header_bytes: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(75),
            body_timeout: Duration::from_secs(30),
            max_connections: 0,
            max_uri_bytes: 8 << 10,
            max_header_bytes: 32 << 10,
        }
    }
}

/// Open connections allowed on the admin port: enough for probes and scrapers, never more.
pub const ADMIN_MAX_CONNECTIONS: usize = 32;
/// Descriptors kept for everything but connections and object databases: listeners, the
/// shard's own databases, logs, the runtime, the app API's connections.
pub const BASE_RESERVE: usize = 256;

/// The connection bound of each port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub ingress: usize,
    pub peer: usize,
    pub admin: usize,
}

/// The most object databases that may be open at once under `nofile` descriptors: `requested`
/// (`--max-open-objects`) when its 2 descriptors per database fit in three quarters of what the
/// base reserve and the admin port leave, else as many as do (at least 16). The other quarter
/// stays for connections. Without this, a cap beyond the limit let storage run out of
/// descriptors (every new database then failed with `EMFILE`) and squeezed the ingress to 16
/// connections.
pub fn fit_open_objects(nofile: u64, requested: usize) -> usize {
    let available = usize::try_from(nofile)
        .unwrap_or(usize::MAX)
        .saturating_sub(BASE_RESERVE + ADMIN_MAX_CONNECTIONS);
    let fits = (available / 4 * 3 / 2).max(16);
    requested.min(fits)
}

/// Splits the descriptor limit `nofile`: 2 per open database (`max_open_objects`), the base
/// reserve and the admin bound stay free; of the rest, an eighth is kept for the connections
/// the sidecar opens itself (to the app and to peers), and the remainder bounds the client
/// connections: all of it for the ingress with one shard, three quarters with several (the
/// peer port gets the other quarter). `max_connections` (when not 0) replaces the ingress share.
pub fn connection_bounds(
    nofile: u64,
    max_open_objects: usize,
    max_connections: usize,
    with_peers: bool,
) -> Bounds {
    let reserve = 2 * max_open_objects + BASE_RESERVE + ADMIN_MAX_CONNECTIONS;
    let free = usize::try_from(nofile)
        .unwrap_or(usize::MAX)
        .saturating_sub(reserve);
    let clients = (free - free / 8).max(16);
    let (ingress, peer) = if with_peers {
        (clients - clients / 4, (clients / 4).max(8))
    } else {
        (clients, 0)
    };
    Bounds {
        ingress: if max_connections > 0 {
            max_connections
        } else {
            ingress
        },
        peer,
        admin: ADMIN_MAX_CONNECTIONS,
    }
}

/// Raises the soft descriptor limit to the hard one and returns it (what the bounds use).
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write to and read from a valid rlimit struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// How one port serves its connections.
#[derive(Clone)]
pub struct Port {
    /// `ingress`, `admin` or `peer` (the metrics label).
    pub name: &'static str,
    pub max_connections: usize,
    pub limits: ConnectionLimits,
}

/// What a connection and the requests on it share: whether a request is in flight (the
/// read deadlines apply only when none is) and whether the connection was upgraded.
struct ConnState {
    active: AtomicUsize,
    started: AtomicU64,
    upgraded: AtomicBool,
    idle_since: Mutex<Instant>,
    /// The task reading the connection, woken when its last request finishes so that it arms
    /// the keep-alive deadline.
    reader: Mutex<Option<Waker>>,
    /// The address of the other end of the connection.
    peer: std::net::SocketAddr,
}

impl ConnState {
    fn new(peer: std::net::SocketAddr) -> Self {
        Self {
            peer,
            active: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            upgraded: AtomicBool::new(false),
            idle_since: Mutex::new(Instant::now()),
            reader: Mutex::new(None),
        }
    }

    fn watching(&self) -> bool {
        !self.upgraded.load(Ordering::Acquire) && self.active.load(Ordering::Acquire) == 0
    }
}

/// A request in flight on a connection, from its head until its answer is written.
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn begin(conn: Arc<ConnState>) -> Self {
        conn.started.fetch_add(1, Ordering::AcqRel);
        conn.active.fetch_add(1, Ordering::AcqRel);
        Self(conn)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Ok(mut t) = self.0.idle_since.lock() {
                *t = Instant::now();
            }
            if let Some(w) = self.0.reader.lock().ok().and_then(|mut w| w.take()) {
                w.wake();
            }
        }
    }
}

/// An answer's body that keeps its request in flight until hyper is done with it.
struct TrackedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Holds a port's gauge up while a connection is open (also after an upgrade).
struct OpenConnection {
    gauge: Gauge,
    _permit: OwnedSemaphorePermit,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// The TCP stream of one connection with its read deadlines: while no request is in flight, a
/// connection must complete a request head within the header timeout (counted from its opening
/// or from the head's first byte) and must start one within the keep-alive timeout of its
/// last answer. A missed deadline fails the read, and hyper closes the connection.
///
/// It also gives hyper's own parse-error answers (400, 414, 431, written before any request
/// exists, with an empty body) the JSON error body every other error has.
struct ConnIo {
    stream: TcpStream,
    conn: Arc<ConnState>,
    header_timeout: Duration,
    keepalive_timeout: Duration,
    opened: Instant,
    /// When the head being read began: (requests started then, instant of its first byte).
    head_started: Option<(u64, Instant)>,
    sleep: Pin<Box<Sleep>>,
    armed: Option<Instant>,
    timed_out: Counter,
    /// Set (to the count of requests started) when everything written was flushed with no
    /// request in flight: while no request starts, the next write begins a new answer.
    boundary: Option<u64>,
    /// A JSON answer replacing hyper's parse-error answer, still to be written.
    replacement: Option<(Bytes, usize)>,
    _open: OpenConnection,
}

impl ConnIo {
    fn deadline(&self) -> Instant {
        let started = self.conn.started.load(Ordering::Acquire);
        match self.head_started {
            Some((request, at)) if request == started => at + self.header_timeout,
            _ if started == 0 => self.opened + self.header_timeout,
            _ => {
                let idle = self
                    .conn
                    .idle_since
                    .lock()
                    .map(|t| *t)
                    .unwrap_or(self.opened);
                idle + self.keepalive_timeout
            }
        }
    }

    /// Whether `buf` is hyper's own answer to a request it could not parse: no request is in
    /// flight, bytes of a new head were read, everything before was flushed, and the write is
    /// exactly an empty-bodied 400, 414 or 431 head.
    fn parse_error_status(&self, buf: &[u8]) -> Option<StatusCode> {
        if !self.at_answer_boundary() {
            return None;
        }
        let started = self.conn.started.load(Ordering::Acquire);
        if !matches!(self.head_started, Some((request, _)) if request == started) {
            return None;
        }
        let text = std::str::from_utf8(buf).ok()?;
        let head = text.strip_suffix("\r\n\r\n")?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next()?;
        let status = match status_line {
            "HTTP/1.1 400 Bad Request" => StatusCode::BAD_REQUEST,
            "HTTP/1.1 414 URI Too Long" => StatusCode::URI_TOO_LONG,
            "HTTP/1.1 431 Request Header Fields Too Large" => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            _ => return None,
        };
        let mut empty = false;
        for line in lines {
            let (name, value) = line.split_once(": ")?;
            match name {
                "content-length" if value == "0" => empty = true,
                "date" => {}
                "connection" if value == "close" => {}
                _ => return None,
            }
        }
        empty.then_some(status)
    }

    fn at_answer_boundary(&self) -> bool {
        self.conn.watching() && self.boundary == Some(self.conn.started.load(Ordering::Acquire))
    }

    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, at)) = &mut self.replacement {
            if *at >= bytes.len() {
                break;
            }
            let n = match Pin::new(&mut self.stream).poll_write(cx, &bytes[*at..]) {
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *at += n;
        }
        Poll::Ready(Ok(()))
    }
}

/// The JSON answer that replaces hyper's empty parse-error answer (the connection closes).
fn parse_error_answer(status: StatusCode) -> Bytes {
    let (code, message) = match status {
        StatusCode::URI_TOO_LONG => (
            "uri_too_long",
            "the request target is too long to parse; see --max-uri-bytes",
        ),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => (
            "headers_too_large",
            "the request head is too large to parse; see --max-header-bytes",
        ),
        _ => (
            "malformed_request",
            "the request is not valid HTTP/1.1 (request line or a header could not be parsed)",
        ),
    };
    let body = ErrorBody::new(code, message).to_json();
    Bytes::from(format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    ))
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && this.conn.watching() {
                    let started = this.conn.started.load(Ordering::Acquire);
                    if !matches!(this.head_started, Some((request, _)) if request == started) {
                        this.head_started = Some((started, Instant::now()));
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if this.conn.upgraded.load(Ordering::Acquire) {
                    return Poll::Pending;
                }
                if let Ok(mut w) = this.conn.reader.lock()
                    && !w.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
                {
                    *w = Some(cx.waker().clone());
                }
                if !this.conn.watching() {
                    return Poll::Pending;
                }
                let deadline = this.deadline();
                if this.armed != Some(deadline) {
                    this.sleep.as_mut().reset(deadline);
                    this.armed = Some(deadline);
                }
                if this.sleep.as_mut().poll(cx).is_ready() {
                    this.timed_out.inc();
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no complete request in time",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.replacement.is_some() {
            // hyper's answer was replaced; what it still writes belongs to it.
            return this.poll_replacement(cx).map_ok(|()| buf.len());
        }
        if let Some(status) = this.parse_error_status(buf) {
            this.replacement = Some((parse_error_answer(status), 0));
            return this.poll_replacement(cx).map_ok(|()| buf.len());
        }
        let r = Pin::new(&mut this.stream).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.boundary = None;
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.replacement.is_some() || this.at_answer_boundary() {
            // At an answer boundary, look at the first slice alone (hyper's own answers are
            // one slice).
            let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| b);
            return Pin::new(this).poll_write(cx, first);
        }
        let r = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.boundary = None;
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_replacement(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        let r = Pin::new(&mut this.stream).poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) && this.conn.watching() {
            this.boundary = Some(this.conn.started.load(Ordering::Acquire));
        }
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_replacement(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.stream).poll_shutdown(cx),
            other => other,
        }
    }
}

/// Why a request is refused before any handler sees it.
pub fn check_request<B>(req: &Request<B>, limits: &ConnectionLimits) -> Result<(), ApiError> {
    let uri = req.uri();
    // HTTP/2 always carries scheme and authority; HTTP/1 must use a path (origin-form):
    // `*` (asterisk-form), CONNECT's `host:port` (authority-form) and absolute URLs are for
    // proxies, and forwarding them would send the app requests it never asked for.
    let origin_form = uri.path().starts_with('/')
        && req.method() != Method::CONNECT
        && (req.version() >= Version::HTTP_2
            || (uri.scheme().is_none() && uri.authority().is_none()));
    if !origin_form {
        return Err(ApiError::bad_request(
            "invalid_target",
            "the request target must be a path starting with '/'; '*', CONNECT and absolute URLs are not served",
        ));
    }
    let uri_len = uri.path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > limits.max_uri_bytes {
        return Err(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!(
                "the request target is {uri_len} bytes; the limit is {}",
                limits.max_uri_bytes
            ),
        ));
    }
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if header_bytes > limits.max_header_bytes {
        return Err(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the request headers are {header_bytes} bytes; the limit is {}",
                limits.max_header_bytes
            ),
        ));
    }
    Ok(())
}

/// Serves one request of a connection: the edge checks, then `app`.
async fn serve_request(
    app: axum::Router,
    limits: &ConnectionLimits,
    conn: Arc<ConnState>,
    req: Request<Incoming>,
) -> Response {
    let in_flight = InFlight::begin(conn.clone());
    let version = req.version();
    let mut resp = match check_request(&req, limits) {
        Ok(()) => match app.oneshot(req.map(Body::new)).await {
            Ok(r) => r,
            Err(never) => match never {},
        },
        Err(e) => e.into_response(),
    };
    let status = resp.status();
    if status == StatusCode::SWITCHING_PROTOCOLS {
        conn.upgraded.store(true, Ordering::Release);
    }
    // The body was refused before it was read (or stopped arriving): the connection cannot
    // carry another request.
    if version < Version::HTTP_2
        && (status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::PAYLOAD_TOO_LARGE)
    {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp.map(|inner| {
        Body::new(TrackedBody {
            inner,
            _in_flight: in_flight,
        })
    })
}

/// Keeps a stopped port's drain waiting until each of its connections has ended.
type DrainToken = mpsc::Sender<()>;

/// Accepts and serves connections on `listener` until `stop` turns true (then stops accepting,
/// asks each connection to finish its in-flight requests, and returns once they have). Without
/// `stop`, serves until the process ends.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    port: Port,
    metrics: Metrics,
    stop: Option<watch::Receiver<bool>>,
) {
    let labels = PortLabels { port: port.name };
    let open = metrics.connections_open.get_or_create(&labels).clone();
    let timed_out = metrics.connections_timed_out.get_or_create(&labels).clone();
    let deferred = metrics.connections_deferred.get_or_create(&labels).clone();
    let accept_errors = metrics.accept_errors.get_or_create(&labels).clone();
    let max = port.max_connections.max(1);
    metrics
        .connections_max
        .get_or_create(&labels)
        .set(i64::try_from(max).unwrap_or(i64::MAX));
    let slots = Arc::new(Semaphore::new(max));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper parses heads up to this size; our own, smaller limits answer JSON (check_request).
    builder
        .http1()
        .max_buf_size(
            ((port.limits.max_uri_bytes + port.limits.max_header_bytes) * 2).max(64 << 10),
        )
        .max_headers(512);
    builder
        .http2()
        .max_concurrent_streams(64)
        .max_header_list_size(u32::try_from(port.limits.max_header_bytes * 2).unwrap_or(u32::MAX));
    let builder = Arc::new(builder);
    let (drain_tx, mut drain_rx) = mpsc::channel::<()>(1);
    let mut stop = stop;
    let limits = Arc::new(port.limits);
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // At the bound: stop accepting (new connections wait in the kernel's backlog)
                // until one of ours closes.
                deferred.inc();
                let Some(p) = until_stopped(&mut stop, slots.clone().acquire_owned()).await else {
                    break;
                };
                match p {
                    Ok(p) => p,
                    Err(_) => break,
                }
            }
        };
        let accepted = match until_stopped(&mut stop, listener.accept()).await {
            None => break,
            Some(a) => a,
        };
        let (stream, peer) = match accepted {
            Ok((s, a)) => (s, a),
            Err(e) => {
                // EMFILE and friends: pause instead of spinning; descriptors free up as
                // connections close.
                accept_errors.inc();
                tracing::warn!(port = port.name, error = %e, "accept failed; pausing");
                drop(permit);
                if until_stopped(&mut stop, tokio::time::sleep(Duration::from_millis(100)))
                    .await
                    .is_none()
                {
                    break;
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        open.inc();
        let conn = Arc::new(ConnState::new(peer));
        let io = ConnIo {
            stream,
            conn: conn.clone(),
            header_timeout: limits.header_timeout,
            keepalive_timeout: limits.keepalive_timeout,
            opened: Instant::now(),
            head_started: None,
            sleep: Box::pin(tokio::time::sleep(limits.header_timeout)),
            armed: None,
            timed_out: timed_out.clone(),
            boundary: Some(0),
            replacement: None,
            _open: OpenConnection {
                gauge: open.clone(),
                _permit: permit,
            },
        };
        tokio::spawn(serve_connection(
            builder.clone(),
            io,
            app.clone(),
            limits.clone(),
            conn,
            stop.clone(),
            drain_tx.clone(),
        ));
    }
    drop(listener);
    drop(drain_tx);
    // Every connection task holds a sender: recv ends when the last one has finished.
    let _ = drain_rx.recv().await;
}

async fn serve_connection(
    builder: Arc<auto::Builder<TokioExecutor>>,
    io: ConnIo,
    app: axum::Router,
    limits: Arc<ConnectionLimits>,
    conn: Arc<ConnState>,
    stop: Option<watch::Receiver<bool>>,
    _drain: DrainToken,
) {
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        // Who is on the other end of the connection (the ingress tells the app).
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(conn.peer));
        let app = app.clone();
        let limits = limits.clone();
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(serve_request(app, &limits, conn, req).await) }
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let result = match stop {
        Some(mut stop) => {
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            tokio::select! {
                r = connection.as_mut() => r,
                () = stopped => {
                    connection.as_mut().graceful_shutdown();
                    connection.as_mut().await
                }
            }
        }
        None => connection.as_mut().await,
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Runs `f` unless `stop` turns true first (`None` then).
async fn until_stopped<F: Future>(
    stop: &mut Option<watch::Receiver<bool>>,
    f: F,
) -> Option<F::Output> {
    match stop {
        Some(stop) => {
            if *stop.borrow() {
                return None;
            }
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            tokio::select! {
                r = f => Some(r),
                () = stopped => None,
            }
        }
        None => Some(f.await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, target: &str, version: Version) -> Request<()> {
        Request::builder()
            .method(method)
            .uri(target)
            .version(version)
            .body(())
            .unwrap()
    }

    #[test]
    fn only_origin_form_targets_pass() {
        let limits = ConnectionLimits::default();
        let code = |r: Request<()>| check_request(&r, &limits).err().map(|e| e.code);
        assert_eq!(code(req(Method::GET, "/objects/x", Version::HTTP_11)), None);
        assert_eq!(
            code(req(Method::OPTIONS, "*", Version::HTTP_11)),
            Some("invalid_target")
        );
        assert_eq!(
            code(req(Method::CONNECT, "example.com:443", Version::HTTP_11)),
            Some("invalid_target")
        );
        assert_eq!(
            code(req(Method::GET, "http://example.com/x", Version::HTTP_11)),
            Some("invalid_target")
        );
        // HTTP/2 requests always carry scheme and authority.
        assert_eq!(
            code(req(Method::GET, "http://example.com/x", Version::HTTP_2)),
            None
        );
    }

    #[test]
    fn long_targets_and_large_heads_are_refused_with_their_status() {
        let limits = ConnectionLimits {
            max_uri_bytes: 10,
            max_header_bytes: 20,
            ..ConnectionLimits::default()
        };
        let long = req(Method::GET, "/0123456789a", Version::HTTP_11);
        let e = check_request(&long, &limits).unwrap_err();
        assert_eq!(e.status, StatusCode::URI_TOO_LONG);
        let mut big = req(Method::GET, "/", Version::HTTP_11);
        big.headers_mut()
            .insert("x-big", HeaderValue::from_static("0123456789abcdef"));
        let e = check_request(&big, &limits).unwrap_err();
        assert_eq!(e.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }

    #[test]
    fn bounds_keep_storage_and_admin_descriptors_in_reserve() {
        let reserve = 2 * 4096 + BASE_RESERVE + ADMIN_MAX_CONNECTIONS;
        let b = connection_bounds(20_000, 4096, 0, false);
        assert_eq!(b.admin, ADMIN_MAX_CONNECTIONS);
        assert_eq!(b.ingress, 10_080);
        // An eighth of what storage, the base and admin leave is kept for outgoing connections.
        assert!(b.ingress + reserve + (20_000 - reserve) / 8 <= 20_000);
        let b = connection_bounds(20_000, 4096, 0, true);
        assert_eq!(b.ingress + b.peer, 10_080);
        assert!(b.peer > 0);
        assert_eq!(connection_bounds(20_000, 4096, 100, false).ingress, 100);
        // Too few descriptors for the reserve: a small bound still lets clients in.
        assert_eq!(connection_bounds(1024, 4096, 0, false).ingress, 16);
    }

    #[test]
    fn an_open_object_cap_is_fitted_to_the_descriptor_limit() {
        // It fits: unchanged.
        assert_eq!(fit_open_objects(20_000, 4096), 4096);
        assert_eq!(fit_open_objects(1 << 20, 100_000), 100_000);
        // It does not: three quarters of what the base and admin leave, 2 per database.
        let fitted = fit_open_objects(20_000, 12_000);
        assert_eq!(
            fitted,
            (20_000 - BASE_RESERVE - ADMIN_MAX_CONNECTIONS) / 4 * 3 / 2
        );
        let fitted_small = fit_open_objects(1024, 4096);
        assert_eq!(
            fitted_small,
            (1024 - BASE_RESERVE - ADMIN_MAX_CONNECTIONS) / 4 * 3 / 2
        );
        // What it leaves for connections is a real bound, not the floor of 16.
        for (nofile, cap) in [(20_000, fitted), (1024, fitted_small)] {
            let b = connection_bounds(nofile, cap, 0, true);
            assert!(
                b.ingress >= 64,
                "{nofile} descriptors: ingress {}",
                b.ingress
            );
            assert!(2 * cap + BASE_RESERVE + b.admin + b.ingress + b.peer <= nofile as usize);
        }
        // Below the base reserve nothing fits; a few databases still open.
        assert_eq!(fit_open_objects(100, 4096), 16);
    }
}
