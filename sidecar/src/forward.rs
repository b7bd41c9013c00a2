//! The peer hop: sending a request (or tunnelling a WebSocket handshake) to the shard that owns
//! its slot. The other end is the [`peer`](crate::peer) port.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use http::{HeaderValue, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use stead_core::protocol;

use crate::app::clean_headers;
use crate::chain::CallChain;
use crate::client::ClientAddr;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// Shown to clients: the address and the cause stay in the sidecar's log.
    #[error("shard {ordinal} is unreachable")]
    Unreachable {
        ordinal: u32,
        addr: String,
        reason: String,
    },
    #[error("shard {ordinal} did not answer within {timeout:?}")]
    Timeout { ordinal: u32, timeout: Duration },
}

/// Keep-alive connections to the other shards' peer ports.
#[derive(Clone)]
pub struct PeerClient {
    client: Client<HttpConnector, Body>,
    token: Option<HeaderValue>,
    timeout: Duration,
}

impl PeerClient {
    /// `timeout` bounds a whole forwarded request (the owner's turn timeout plus a margin).
    pub fn new(token: Option<&str>, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(connector);
        Self {
            client,
            token: token.and_then(|t| HeaderValue::from_str(t).ok()),
            timeout,
        }
    }

    /// Sends `req` (path `/objects/…`) to shard `ordinal` at `addr`.
    pub async fn send(
        &self,
        ordinal: u32,
        addr: &str,
        mut req: Request,
        chain: &CallChain,
        hops: u32,
    ) -> Result<Response, ForwardError> {
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let unreachable = |reason: String| ForwardError::Unreachable {
            ordinal,
            addr: addr.to_owned(),
            reason,
        };
        *req.uri_mut() = Uri::try_from(format!("http://{addr}{path}"))
            .map_err(|e| unreachable(e.to_string()))?;
        // Peers speak HTTP/1.1 whatever the client spoke.
        *req.version_mut() = http::Version::HTTP_11;
        let client = req.extensions().get::<ClientAddr>().copied();
        let headers = req.headers_mut();
        clean_headers(headers, true);
        if let Some(ClientAddr(ip)) = client
            && let Ok(v) = HeaderValue::from_str(&ip.to_string())
        {
            headers.insert(protocol::CLIENT_ADDR, v);
        }
        if let Some(t) = &self.token {
            headers.insert(protocol::PEER_TOKEN, t.clone());
        }
        headers.insert(protocol::HOPS, HeaderValue::from(hops));
        if !chain.is_empty()
            && let Ok(v) = HeaderValue::from_str(&chain.to_header())
        {
            headers.insert(protocol::CHAIN, v);
        }
        match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Err(_) => Err(ForwardError::Timeout {
                ordinal,
                timeout: self.timeout,
            }),
            Ok(Err(e)) => Err(unreachable(e.to_string())),
            Ok(Ok(resp)) => Ok(resp.map(Body::new)),
        }
    }
}

impl PeerClient {
    /// Tunnels a WebSocket handshake to shard `ordinal`: the owner answers the handshake, and on
    /// 101 the two upgraded connections are spliced together. Any other answer (a refusal) is
    /// passed back as it is.
    pub async fn tunnel(
        &self,
        ordinal: u32,
        addr: &str,
        mut req: Request,
        hops: u32,
    ) -> Result<Response, ForwardError> {
        let unreachable = |reason: String| ForwardError::Unreachable {
            ordinal,
            addr: addr.to_owned(),
            reason,
        };
        let client_side = hyper::upgrade::on(&mut req);
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let mut out = http::Request::new(Body::empty());
        *out.method_mut() = req.method().clone();
        *out.uri_mut() = Uri::try_from(path).map_err(|e| unreachable(e.to_string()))?;
        for (k, v) in req.headers() {
            if !protocol::is_reserved_header(k.as_str()) {
                out.headers_mut().append(k.clone(), v.clone());
            }
        }
        if let Ok(host) = HeaderValue::from_str(addr) {
            out.headers_mut().insert(http::header::HOST, host);
        }
        ClientAddr::set_header(out.headers_mut(), req.extensions());
        if let Some(t) = &self.token {
            out.headers_mut().insert(protocol::PEER_TOKEN, t.clone());
        }
        out.headers_mut()
            .insert(protocol::HOPS, HeaderValue::from(hops));

        let connect = tokio::net::TcpStream::connect(addr);
        let stream = tokio::time::timeout(Duration::from_secs(2), connect)
            .await
            .map_err(|_| unreachable("connect timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "tunnel connection ended");
            }
        });
        let mut resp = tokio::time::timeout(self.timeout, sender.send_request(out))
            .await
            .map_err(|_| ForwardError::Timeout {
                ordinal,
                timeout: self.timeout,
            })?
            .map_err(|e| unreachable(e.to_string()))?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Ok(resp.map(Body::new));
        }
        let owner_side = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match tokio::try_join!(client_side, owner_side) {
                Ok((a, b)) => {
                    let mut a = hyper_util::rt::TokioIo::new(a);
                    let mut b = hyper_util::rt::TokioIo::new(b);
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                }
                Err(e) => tracing::debug!(error = %e, "WebSocket tunnel failed to upgrade"),
            }
        });
        let (parts, _) = resp.into_parts();
        Ok(Response::from_parts(parts, Body::empty()))
    }
}

impl PeerClient {
    /// Calls an admin endpoint (`/v1/admin/…`) on shard `ordinal`'s peer port and reads the whole
    /// answer, all within `timeout`.
    pub async fn admin(
        &self,
        ordinal: u32,
        addr: &str,
        method: http::Method,
        path: &str,
        body: bytes::Bytes,
        timeout: Duration,
    ) -> Result<(StatusCode, bytes::Bytes), ForwardError> {
        use http_body_util::BodyExt as _;
        let unreachable = |reason: String| ForwardError::Unreachable {
            ordinal,
            addr: addr.to_owned(),
            reason,
        };
        let mut req = http::Request::new(Body::from(body));
        *req.method_mut() = method;
        *req.uri_mut() = Uri::try_from(format!("http://{addr}{path}"))
            .map_err(|e| unreachable(e.to_string()))?;
        if let Some(t) = &self.token {
            req.headers_mut().insert(protocol::PEER_TOKEN, t.clone());
        }
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ForwardError::Timeout { ordinal, timeout })?
    }
}
