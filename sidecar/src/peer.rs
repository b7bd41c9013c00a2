//! The peer port: object requests forwarded by other sidecars (the [`forward`](crate::forward)
//! hop), authenticated with the namespace's peer token, handed to the [`route`](crate::route).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use stead_core::protocol;

use crate::app::strip_stead_headers;
use crate::chain::CallChain;
use crate::client::ClientAddr;
use crate::error::ApiError;
use crate::peer_admin::PeerAdmin;
use crate::route::ObjectRouter;
use crate::target::{Target, parse_route};

pub struct PeerServer {
    pub token: Option<String>,
    pub router: Arc<ObjectRouter>,
    pub admin: Arc<PeerAdmin>,
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The peer port: object requests forwarded by other sidecars.
pub async fn handle(State(peer): State<Arc<PeerServer>>, mut req: Request) -> Response {
    let given = req
        .headers()
        .get(protocol::PEER_TOKEN)
        .map(|v| v.as_bytes());
    let authorized = match (&peer.token, given) {
        (Some(t), Some(g)) => same_secret(t.as_bytes(), g),
        _ => false,
    };
    if !authorized {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the peer port needs the namespace's peer token",
        )
        .into_response();
    }
    if req.uri().path().starts_with("/v1/admin/") {
        return peer.admin.handle(req).await;
    }
    let hops = req
        .headers()
        .get(protocol::HOPS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(1);
    let chain = match req.headers().get(protocol::CHAIN).map(|v| v.to_str()) {
        None => Some(CallChain::default()),
        Some(Ok(v)) => CallChain::parse(v),
        Some(Err(_)) => None,
    };
    let Some(chain) = chain else {
        return ApiError::bad_request("invalid_chain", "malformed stead-chain header")
            .into_response();
    };
    // The forwarding shard's ingress saw the client; the owner tells the app that address.
    if let Some(client) = ClientAddr::from_header(req.headers()) {
        req.extensions_mut().insert(client);
    }
    // Hop-by-hop headers stay: a tunnelled WebSocket handshake needs them.
    strip_stead_headers(req.headers_mut());
    let target = parse_route(
        req.method(),
        req.uri().path(),
        req.uri().query(),
        peer.router.slots,
        |c| peer.router.knows_class(c),
    );
    match target {
        Ok(Target::Object { object, rest }) => {
            peer.router.object(object, rest, req, chain, hops).await
        }
        Ok(_) => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "the peer port serves object routes only",
        )
        .into_response(),
        Err(e) => e.into_response(),
    }
}
