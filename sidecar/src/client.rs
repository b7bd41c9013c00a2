//! Who the client is: the IP address of its TCP connection to the ingress, told to the app in
//! `stead-client-addr` and carried across the peer hop so the owner tells the same address.

use std::net::{IpAddr, SocketAddr};

use axum::extract::ConnectInfo;
use http::{Extensions, HeaderMap, HeaderValue};
use stead_core::protocol;

/// The client's address, a request extension from the ingress (or the peer port, which reads it
/// from the forwarding shard's `stead-client-addr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl ClientAddr {
    /// The address of the connection a request came in on (IPv4-mapped IPv6 written as IPv4).
    pub fn of_connection(ext: &Extensions) -> Option<Self> {
        ext.get::<ConnectInfo<SocketAddr>>()
            .map(|c| Self(c.0.ip().to_canonical()))
    }

    /// Reads `stead-client-addr`; anything that is not an IP address is ignored.
    pub fn from_header(headers: &HeaderMap) -> Option<Self> {
        headers
            .get(protocol::CLIENT_ADDR)?
            .to_str()
            .ok()?
            .parse()
            .ok()
            .map(Self)
    }

    /// Sets `stead-client-addr` from the request's extension, when it has one.
    pub fn set_header(headers: &mut HeaderMap, ext: &Extensions) {
        if let Some(Self(ip)) = ext.get::<Self>()
            && let Ok(v) = HeaderValue::from_str(&ip.to_string())
        {
            headers.insert(protocol::CLIENT_ADDR, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_carries_the_canonical_address_and_refuses_garbage() {
        let mut ext = Extensions::new();
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:4000".parse().unwrap();
        ext.insert(ConnectInfo(mapped));
        let client = ClientAddr::of_connection(&ext).unwrap();
        assert_eq!(client, ClientAddr("10.1.2.3".parse().unwrap()));
        ext.insert(client);
        let mut headers = HeaderMap::new();
        ClientAddr::set_header(&mut headers, &ext);
        assert_eq!(headers[protocol::CLIENT_ADDR], "10.1.2.3");
        assert_eq!(ClientAddr::from_header(&headers), Some(client));
        headers.insert(
            protocol::CLIENT_ADDR,
            HeaderValue::from_static("10.0.0.1, 1.2.3.4"),
        );
        assert_eq!(ClientAddr::from_header(&headers), None);
    }
}
