//! Who the shards are: this shard's ordinal, the ring, and where each peer listens. The ring
//! changes only by resharding: a newer ring (higher epoch) is offered by the coordinator or read
//! from the namespace status, and replaces the current one.

#[cfg(feature = "kube")]
pub mod kube;

use std::sync::{Arc, RwLock};

use stead_core::Ring;

pub trait Membership: Send + Sync {
    /// This shard's ordinal.
    fn me(&self) -> u32;
    /// The current routing table.
    fn ring(&self) -> Arc<Ring>;
    /// The peer-port address (`host:port`) of shard `ordinal`.
    fn peer_addr(&self, ordinal: u32) -> Option<String>;
    /// Offers a ring, and optionally the peer list of every ordinal. The ring is taken only if
    /// its epoch is newer than the current one; the peers if they are at least as many as now.
    /// Returns whether the ring was taken.
    fn offer(&self, ring: Ring, peers: Option<Vec<String>>) -> bool;
}

/// Peers from a list (`--peers`, or pushed by the coordinator) or from a template
/// (`--peer-template`, `{i}` the ordinal), and a ring that only moves forward.
pub struct StaticMembership {
    me: u32,
    template: Option<String>,
    state: RwLock<(Arc<Ring>, Vec<String>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error(
        "--shard-ordinal {me} is out of range: --peers lists {peers} shards (a new shard must be listed in --peers)"
    )]
    OrdinalOutOfRange { me: u32, peers: usize },
    #[error("--peer-token is required when the cluster has more than one shard")]
    MissingToken,
    #[error("--peer-template {0:?} has no `{{i}}` for the ordinal")]
    BadTemplate(String),
}

impl StaticMembership {
    pub fn new(
        me: u32,
        peers: Vec<String>,
        template: Option<String>,
        ring: Ring,
    ) -> Result<Self, MembershipError> {
        if let Some(t) = &template
            && !t.contains("{i}")
        {
            return Err(MembershipError::BadTemplate(t.clone()));
        }
        if template.is_none() && !peers.is_empty() && me as usize >= peers.len() {
            return Err(MembershipError::OrdinalOutOfRange {
                me,
                peers: peers.len(),
            });
        }
        Ok(Self {
            me,
            template,
            state: RwLock::new((Arc::new(ring), peers)),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, (Arc<Ring>, Vec<String>)> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl Membership for StaticMembership {
    fn me(&self) -> u32 {
        self.me
    }

    fn ring(&self) -> Arc<Ring> {
        self.read().0.clone()
    }

    fn peer_addr(&self, ordinal: u32) -> Option<String> {
        if let Some(addr) = self.read().1.get(ordinal as usize) {
            return Some(addr.clone());
        }
        self.template
            .as_ref()
            .map(|t| t.replace("{i}", &ordinal.to_string()))
    }

    fn offer(&self, ring: Ring, peers: Option<Vec<String>>) -> bool {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        if let Some(peers) = peers
            && peers.len() >= state.1.len()
        {
            state.1 = peers;
        }
        if ring.epoch > state.0.epoch && ring.slots() == state.0.slots() {
            state.0 = Arc::new(ring);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_newer_ring_is_taken_and_the_peer_list_only_grows() {
        let m = StaticMembership::new(
            0,
            vec!["a:1".into(), "b:1".into()],
            None,
            Ring::new(2, 64, 2),
        )
        .unwrap();
        assert!(!m.offer(Ring::new(1, 64, 3), None));
        assert_eq!(m.ring().shards, 2);
        assert!(m.offer(
            Ring::new(3, 64, 3),
            Some(vec!["a:1".into(), "b:1".into(), "c:1".into()])
        ));
        assert_eq!((m.ring().epoch, m.ring().shards), (3, 3));
        assert_eq!(m.peer_addr(2).as_deref(), Some("c:1"));
        assert!(!m.offer(Ring::new(3, 64, 1), Some(vec!["x:1".into()])));
        assert_eq!(m.peer_addr(0).as_deref(), Some("a:1"));
    }

    #[test]
    fn a_template_names_any_ordinal() {
        let m = StaticMembership::new(
            4,
            vec![],
            Some("c-{i}.c-peers.apps.svc:7878".into()),
            Ring::new(1, 64, 3),
        )
        .unwrap();
        assert_eq!(m.peer_addr(7).as_deref(), Some("c-7.c-peers.apps.svc:7878"));
        assert!(
            StaticMembership::new(0, vec![], Some("nope".into()), Ring::new(1, 64, 1)).is_err()
        );
    }
}
