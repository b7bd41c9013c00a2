//! Membership in Kubernetes: the ordinal from the pod name, every peer from the peer template
//! (`{name}-{i}.{name}-peers.{ns}.svc:7878`, the headless Service's stable DNS names), and the
//! ring from the `DurableNamespace` status, which the operator publishes (decision 0007).
//!
//! At start the sidecar waits (bounded) until `status.ring` exists; then a watch offers every
//! ring the status publishes, and only a newer epoch is taken. The coordinator also tells each
//! shard the new ring directly (`PUT /v1/admin/ring`); the watch is what a shard that missed it
//! (restarted, partitioned) catches up from.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use stead_core::Ring;
use stead_core::crd::{DurableNamespace, RingStatus};

use super::Membership;

/// How long a starting sidecar waits for its namespace's `status.ring` by default.
pub const DEFAULT_RING_WAIT: Duration = Duration::from_secs(120);
/// The ordinal placeholder of a peer template.
pub const ORDINAL_PLACEHOLDER: &str = "{i}";

#[derive(Debug, thiserror::Error)]
pub enum KubeMembershipError {
    #[error(
        "--peer-template {0:?} has no {{i}} where the shard ordinal goes, e.g. counter-{{i}}.counter-peers.apps.svc:7878"
    )]
    BadTemplate(String),
    #[error(
        "no Kubernetes client ({0}): in a pod the sidecar uses its service account; outside one, set KUBECONFIG"
    )]
    Client(String),
    #[error(
        "DurableNamespace {namespace}/{name} has no status.ring after {waited:?} ({last}): is the Stead operator running? Check `kubectl get dn {name} -n {namespace}`"
    )]
    NoRing {
        namespace: String,
        name: String,
        waited: Duration,
        last: String,
    },
}

/// Where to find the namespace and this shard.
#[derive(Debug, Clone)]
pub struct KubeSettings {
    /// Kubernetes namespace of the DurableNamespace (`POD_NAMESPACE`).
    pub namespace: String,
    /// Name of the DurableNamespace (`STEAD_NAMESPACE`).
    pub name: String,
    /// This shard's ordinal (from the pod name).
    pub me: u32,
    /// Peer address of any ordinal, `{i}` standing for it.
    pub peer_template: String,
    pub slots: u32,
    /// Give up at start after this long without `status.ring`.
    pub ring_wait: Duration,
}

impl KubeSettings {
    /// The settings of a sidecar in Kubernetes: no `--peers`, a peer template, and the pod's
    /// namespace and DurableNamespace (both set by the operator). `None` otherwise (local mode).
    pub fn from_config(
        config: &crate::config::SidecarConfig,
        peer_template: Option<&str>,
    ) -> Option<Self> {
        if !config.peers.is_empty() {
            return None;
        }
        Some(Self {
            namespace: config.pod_namespace.clone().filter(|s| !s.is_empty())?,
            name: config.durable_namespace.clone().filter(|s| !s.is_empty())?,
            me: config.ordinal(),
            peer_template: peer_template.filter(|t| !t.is_empty())?.to_owned(),
            slots: config.slots,
            ring_wait: DEFAULT_RING_WAIT,
        })
    }
}

/// Membership that follows the `DurableNamespace` status.
#[derive(Debug)]
pub struct KubeMembership {
    me: u32,
    peer_template: String,
    slots: u32,
    ring: RwLock<Arc<Ring>>,
}

/// The ring a published `status.ring` stands for; `None` when it is not a ring (epoch or shards
/// below 1).
pub fn ring_of(status: &RingStatus, slots: u32) -> Option<Ring> {
    let epoch = u64::try_from(status.epoch).ok().filter(|e| *e >= 1)?;
    let shards = u32::try_from(status.shards).ok().filter(|s| *s >= 1)?;
    Some(Ring::new(epoch, slots, shards))
}

impl KubeMembership {
    /// Membership starting from `ring`.
    pub fn new(me: u32, peer_template: String, ring: Ring) -> Result<Self, KubeMembershipError> {
        if !peer_template.contains(ORDINAL_PLACEHOLDER) {
            return Err(KubeMembershipError::BadTemplate(peer_template));
        }
        Ok(Self {
            me,
            slots: ring.slots(),
            peer_template,
            ring: RwLock::new(Arc::new(ring)),
        })
    }

    /// Wait (up to `settings.ring_wait`) for the namespace's `status.ring`, then follow it with a
    /// watch that runs until the returned task is aborted or the process ends. Every ring the
    /// watch sees is given to `offer` as well (the sidecar's router, which records it).
    pub async fn start(
        client: Client,
        settings: KubeSettings,
        offer: impl Fn(Ring) -> bool + Send + Sync + 'static,
    ) -> Result<(Arc<Self>, tokio::task::JoinHandle<()>), KubeMembershipError> {
        if !settings.peer_template.contains(ORDINAL_PLACEHOLDER) {
            return Err(KubeMembershipError::BadTemplate(settings.peer_template));
        }
        let api: Api<DurableNamespace> = Api::namespaced(client, &settings.namespace);
        let first = wait_for_ring(&api, &settings).await?;
        let membership = Arc::new(Self::new(
            settings.me,
            settings.peer_template.clone(),
            first,
        )?);
        let watched = membership.clone();
        let name = settings.name.clone();
        let slots = settings.slots;
        let task = tokio::spawn(async move {
            watch_rings(api, &name, slots, move |ring| {
                let taken = watched.offer(ring.clone(), None);
                offer(ring) || taken
            })
            .await
        });
        Ok((membership, task))
    }

    /// The Kubernetes branch of the sidecar's choice of membership: `Ok(None)` when `config` is
    /// not a Kubernetes pod's (see [`KubeSettings::from_config`]); else [`Self::start`] with this
    /// pod's service account.
    pub async fn start_for(
        config: &crate::config::SidecarConfig,
        peer_template: Option<&str>,
        offer: impl Fn(Ring) -> bool + Send + Sync + 'static,
    ) -> Result<Option<(Arc<Self>, tokio::task::JoinHandle<()>)>, KubeMembershipError> {
        let Some(settings) = KubeSettings::from_config(config, peer_template) else {
            return Ok(None);
        };
        Self::start(client().await?, settings, offer)
            .await
            .map(Some)
    }
}

impl Membership for KubeMembership {
    /// Take `ring` if its epoch is newer than the current one. Returns whether it was taken.
    /// (The peers come from the template, so a peer list is not needed here.)
    fn offer(&self, ring: Ring, _peers: Option<Vec<String>>) -> bool {
        let mut current = match self.ring.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if ring.epoch <= current.epoch || ring.slots() != self.slots {
            return false;
        }
        tracing::info!(
            epoch = ring.epoch,
            shards = ring.shards,
            "took the ring published in the DurableNamespace status"
        );
        *current = Arc::new(ring);
        true
    }

    fn me(&self) -> u32 {
        self.me
    }

    fn ring(&self) -> Arc<Ring> {
        match self.ring.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn peer_addr(&self, ordinal: u32) -> Option<String> {
        Some(
            self.peer_template
                .replace(ORDINAL_PLACEHOLDER, &ordinal.to_string()),
        )
    }
}

/// The Kubernetes client of this pod (its service account), or of `KUBECONFIG` outside a pod.
pub async fn client() -> Result<Client, KubeMembershipError> {
    Client::try_default()
        .await
        .map_err(|e| KubeMembershipError::Client(e.to_string()))
}

/// Poll the namespace until its status has a ring, or the bound passes.
async fn wait_for_ring(
    api: &Api<DurableNamespace>,
    settings: &KubeSettings,
) -> Result<Ring, KubeMembershipError> {
    let started = tokio::time::Instant::now();
    loop {
        let last = match api.get_opt(&settings.name).await {
            Ok(Some(dn)) => {
                match dn
                    .status
                    .as_ref()
                    .and_then(|s| s.ring.as_ref())
                    .and_then(|r| ring_of(r, settings.slots))
                {
                    Some(ring) => return Ok(ring),
                    None => "the DurableNamespace has no status.ring yet".to_owned(),
                }
            }
            Ok(None) => "the DurableNamespace does not exist".to_owned(),
            Err(e) => format!("reading it failed: {e}"),
        };
        let waited = started.elapsed();
        if waited >= settings.ring_wait {
            return Err(KubeMembershipError::NoRing {
                namespace: settings.namespace.clone(),
                name: settings.name.clone(),
                waited: settings.ring_wait,
                last,
            });
        }
        tracing::info!(name = %settings.name, %last, "waiting for the ring in the DurableNamespace status");
        tokio::time::sleep(Duration::from_secs(1).min(settings.ring_wait - waited)).await;
    }
}

/// Watch one DurableNamespace and give every published ring to `offer` (which keeps only
/// newer epochs). Reconnects with backoff on its own; runs until the task is dropped.
pub async fn watch_rings(
    api: Api<DurableNamespace>,
    name: &str,
    slots: u32,
    offer: impl Fn(Ring) -> bool,
) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api, config)
        .default_backoff()
        .applied_objects()
        .boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(dn) => {
                let ring = dn
                    .status
                    .as_ref()
                    .and_then(|s| s.ring.as_ref())
                    .and_then(|r| ring_of(r, slots));
                if let Some(ring) = ring {
                    offer(ring);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, name, "watching the DurableNamespace failed; retrying")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn membership(epoch: u64, shards: u32) -> KubeMembership {
        KubeMembership::new(
            2,
            "chat-{i}.chat-peers.apps.svc:7878".into(),
            Ring::new(epoch, 64, shards),
        )
        .expect("membership")
    }

    #[test]
    fn kubernetes_membership_is_chosen_only_for_a_pod_with_a_template_and_no_peer_list() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            config: crate::config::SidecarConfig,
        }
        let parse = |args: &[&str]| {
            Cli::try_parse_from([&["stead", "--classes", "Counter"][..], args].concat())
                .expect("config")
                .config
        };
        let pod = parse(&[
            "--pod-name",
            "chat-2",
            "--pod-namespace",
            "apps",
            "--durable-namespace",
            "chat",
        ]);
        let template = Some("chat-{i}.chat-peers.apps.svc:7878");
        let s = KubeSettings::from_config(&pod, template).expect("kubernetes");
        assert_eq!(
            (s.namespace.as_str(), s.name.as_str(), s.me),
            ("apps", "chat", 2)
        );
        assert!(
            KubeSettings::from_config(&pod, None).is_none(),
            "no template"
        );
        let local = parse(&[
            "--peers",
            "127.0.0.1:1,127.0.0.1:2",
            "--pod-namespace",
            "apps",
            "--durable-namespace",
            "chat",
        ]);
        assert!(
            KubeSettings::from_config(&local, template).is_none(),
            "a peer list is local mode"
        );
        let bare = parse(&[]);
        assert!(KubeSettings::from_config(&bare, template).is_none());
    }

    #[test]
    fn peers_are_the_stable_dns_names_of_any_ordinal() {
        let m = membership(1, 3);
        assert_eq!(m.me(), 2);
        assert_eq!(
            m.peer_addr(7).as_deref(),
            Some("chat-7.chat-peers.apps.svc:7878"),
            "shards beyond the ring are reachable too (new shards joining)"
        );
    }

    #[test]
    fn only_a_newer_epoch_is_taken() {
        let m = membership(3, 3);
        assert!(!m.offer(Ring::new(3, 64, 5), None), "same epoch");
        assert!(!m.offer(Ring::new(2, 64, 5), None), "older epoch");
        assert_eq!(m.ring().shards, 3);
        assert!(m.offer(Ring::new(4, 64, 5), None));
        assert_eq!((m.ring().epoch, m.ring().shards), (4, 5));
        assert!(
            !m.offer(Ring::new(9, 128, 5), None),
            "a ring over other slots is not this namespace's"
        );
    }

    #[test]
    fn a_template_without_the_ordinal_is_refused() {
        let e = KubeMembership::new(0, "chat-0:7878".into(), Ring::new(1, 8, 1)).unwrap_err();
        assert!(e.to_string().contains("{i}"), "{e}");
    }

    #[test]
    fn a_status_ring_below_one_is_not_a_ring() {
        let ok = RingStatus {
            epoch: 2,
            shards: 3,
            moving: 0,
        };
        assert_eq!(ring_of(&ok, 16), Some(Ring::new(2, 16, 3)));
        for bad in [(0, 3), (2, 0), (-1, 3)] {
            let r = RingStatus {
                epoch: bad.0,
                shards: bad.1,
                moving: 0,
            };
            assert_eq!(ring_of(&r, 16), None, "{bad:?}");
        }
    }
}
