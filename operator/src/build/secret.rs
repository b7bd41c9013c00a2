//! The peer-token Secret: sidecars authenticate forwarded requests with it.
//!
//! The token is generated once. If the Secret already holds a token it is kept as it is: a new
//! token would split the shards into ones that still use the old token and ones that use the new,
//! and forwarding between them would fail with 401.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use super::{TOKEN_KEY, child_meta, names};
use crate::error::Error;
use crate::validate::ValidatedSpec;

/// The token in an existing Secret, if it holds a usable one.
pub fn existing_token(existing: Option<&Secret>) -> Option<ByteString> {
    existing
        .and_then(|s| s.data.as_ref())
        .and_then(|d| d.get(TOKEN_KEY))
        .filter(|t| !t.0.is_empty())
        .cloned()
}

/// A fresh token: 32 random bytes as 64 hex characters.
pub fn generate_token() -> Result<ByteString, Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Error::Random(e.to_string()))?;
    Ok(ByteString(hex::encode(bytes).into_bytes()))
}

/// The Secret to apply: the existing token when there is one, else `fresh`.
pub fn peer_token_secret(
    spec: &ValidatedSpec,
    existing: Option<&Secret>,
    fresh: ByteString,
) -> Secret {
    let token = existing_token(existing).unwrap_or(fresh);
    Secret {
        metadata: child_meta(spec, names::token_secret(&spec.name), "sidecar"),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(TOKEN_KEY.to_owned(), token)])),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::chat_spec;

    fn token_of(s: &Secret) -> Vec<u8> {
        s.data
            .as_ref()
            .and_then(|d| d.get(TOKEN_KEY))
            .map(|t| t.0.clone())
            .unwrap_or_default()
    }

    #[test]
    fn a_new_namespace_gets_a_fresh_random_token() {
        let fresh = generate_token().expect("random");
        assert_eq!(fresh.0.len(), 64);
        assert_ne!(fresh, generate_token().expect("random"));
        let s = peer_token_secret(&chat_spec(), None, fresh.clone());
        assert_eq!(s.metadata.name.as_deref(), Some("chat-peer-token"));
        assert_eq!(token_of(&s), fresh.0);
        assert_eq!(s.type_.as_deref(), Some("Opaque"));
    }

    #[test]
    fn an_existing_token_is_kept() {
        let spec = chat_spec();
        let existing = peer_token_secret(&spec, None, ByteString(b"old-token".to_vec()));
        let again = peer_token_secret(&spec, Some(&existing), ByteString(b"new-token".to_vec()));
        assert_eq!(token_of(&again), b"old-token");
    }

    #[test]
    fn an_empty_token_is_replaced() {
        let spec = chat_spec();
        let empty = peer_token_secret(&spec, None, ByteString(Vec::new()));
        let fixed = peer_token_secret(&spec, Some(&empty), ByteString(b"new".to_vec()));
        assert_eq!(token_of(&fixed), b"new");
    }
}
