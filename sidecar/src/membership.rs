//! Who the shards are: this shard's ordinal, the ring, and where each peer listens. A static list
//! from flags now; the Kubernetes source (namespace status + headless Service DNS) implements the
//! same trait.

#[cfg(feature = "kube")]
pub mod kube;

use std::sync::Arc;

use stead_core::Ring;

pub trait Membership: Send + Sync {
    /// This shard's ordinal.
    fn me(&self) -> u32;
    /// The current routing table.
    fn ring(&self) -> Arc<Ring>;
    /// The peer-port address (`host:port`) of shard `ordinal`.
    fn peer_addr(&self, ordinal: u32) -> Option<String>;
}

/// A fixed list of peers, in ordinal order (`--peers`); the ring is `ring(peers.len())`, epoch 1.
pub struct StaticMembership {
    me: u32,
    peers: Vec<String>,
    ring: Arc<Ring>,
}

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("--shard-ordinal {me} is out of range: --peers lists {peers} shards")]
    OrdinalOutOfRange { me: u32, peers: usize },
    #[error("--peer-token is required when --peers lists more than one shard")]
    MissingToken,
}

impl StaticMembership {
    pub fn new(me: u32, peers: Vec<String>, slots: u32) -> Result<Self, MembershipError> {
        let shards = peers.len().max(1);
        if me as usize >= shards {
            return Err(MembershipError::OrdinalOutOfRange {
                me,
                peers: peers.len(),
            });
        }
        Ok(Self {
            me,
            ring: Arc::new(Ring::new(1, slots, shards as u32)),
            peers,
        })
    }
}

impl Membership for StaticMembership {
    fn me(&self) -> u32 {
        self.me
    }

    fn ring(&self) -> Arc<Ring> {
        self.ring.clone()
    }

    fn peer_addr(&self, ordinal: u32) -> Option<String> {
        self.peers.get(ordinal as usize).cloned()
    }
}
