//! [`KubeCluster`]: the shared scenarios against a `DurableNamespace` running in a real
//! Kubernetes cluster (kind in CI, see `scripts/kind-e2e.sh`).
//!
//! It drives the cluster with `kubectl` (the one the user has, honouring `KUBECONFIG`; `KUBECTL`
//! names another binary) and reaches each shard pod through `kubectl port-forward` on loopback:
//! ingress, peer and admin ports of shard `i` are forwarded from fixed local ports, re-opened
//! after a pod restart so that [`Cluster::entries`] never changes.
//!
//! One difference from local processes: a killed pod is recreated by its StatefulSet at once,
//! so a shard cannot be kept down until [`Cluster::restart`]. Scenarios that need a shard to
//! stay down (`kill_one_shard_under_load`) are not run here; the kind tier runs
//! [`objects_survive_a_pod_restart`] instead.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_trait::async_trait;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use crate::client::Client;
use crate::cluster::{Cluster, names_by_owner};
use crate::local::free_port;
use crate::scenarios::object_url;

/// The sidecar's container ports in every shard pod (`docs/sidecar.md` defaults).
pub const INGRESS_PORT: u16 = 8787;
pub const PEER_PORT: u16 = 7878;
pub const ADMIN_PORT: u16 = 9788;

/// How long a pod may take to be recreated and become ready (image already loaded).
const READY_TIMEOUT: Duration = Duration::from_secs(300);

/// Local ports forwarded to one shard pod.
#[derive(Debug, Clone, Copy)]
struct Ports {
    ingress: u16,
    peer: u16,
    admin: u16,
}

/// A `DurableNamespace` in a Kubernetes cluster, reached through `kubectl port-forward`.
pub struct KubeCluster {
    kubectl: String,
    namespace: String,
    pods: Vec<String>,
    slots: u32,
    ports: Vec<Ports>,
    forwards: Mutex<HashMap<usize, Child>>,
    /// Pod uid seen at the last kill, so that restart waits for the new pod.
    killed: Mutex<HashMap<usize, String>>,
}

impl KubeCluster {
    /// Connects to the `DurableNamespace` `name` in Kubernetes namespace `namespace`: waits
    /// until every shard pod is ready and forwards its ports.
    pub async fn connect(namespace: &str, name: &str) -> anyhow::Result<Self> {
        let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".to_owned());
        let dn = kubectl_json(
            &kubectl,
            &[
                "-n",
                namespace,
                "get",
                "durablenamespace",
                name,
                "-o",
                "json",
            ],
        )
        .await?;
        let shards = dn["spec"]["shards"].as_u64().context("spec.shards")? as usize;
        let slots = dn["spec"]["slots"]
            .as_u64()
            .unwrap_or(stead_core::id::DEFAULT_SLOTS as u64) as u32;
        let uid = dn["metadata"]["uid"]
            .as_str()
            .context("metadata.uid")?
            .to_owned();

        // The StatefulSet the operator made for it: the one it controls.
        let deadline = Instant::now() + READY_TIMEOUT;
        let sts = loop {
            let list = kubectl_json(
                &kubectl,
                &["-n", namespace, "get", "statefulsets", "-o", "json"],
            )
            .await?;
            let found = list["items"].as_array().into_iter().flatten().find(|s| {
                s["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid.as_str()))
            });
            if let Some(s) = found {
                break s["metadata"]["name"]
                    .as_str()
                    .context("StatefulSet name")?
                    .to_owned();
            }
            if Instant::now() > deadline {
                bail!(
                    "no StatefulSet owned by DurableNamespace {namespace}/{name} after {READY_TIMEOUT:?}"
                );
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        };
        let pods = (0..shards)
            .map(|i| format!("{sts}-{i}"))
            .collect::<Vec<_>>();
        let mut ports = Vec::with_capacity(shards);
        for _ in 0..shards {
            ports.push(Ports {
                ingress: free_port()?,
                peer: free_port()?,
                admin: free_port()?,
            });
        }
        let cluster = Self {
            kubectl,
            namespace: namespace.to_owned(),
            pods,
            slots,
            ports,
            forwards: Mutex::new(HashMap::new()),
            killed: Mutex::new(HashMap::new()),
        };
        for shard in 0..shards {
            cluster.wait_ready(shard, None).await?;
            cluster.forward(shard).await?;
        }
        Ok(cluster)
    }

    /// The pod of shard `shard`.
    pub fn pod(&self, shard: usize) -> &str {
        &self.pods[shard]
    }

    async fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-n", self.namespace.as_str()];
        all.extend_from_slice(args);
        kubectl_text(&self.kubectl, &all).await
    }

    async fn pod_uid(&self, shard: usize) -> Option<String> {
        self.kubectl(&[
            "get",
            "pod",
            self.pod(shard),
            "-o",
            "jsonpath={.metadata.uid}",
        ])
        .await
        .ok()
        .filter(|u| !u.is_empty())
    }

    /// Waits until the pod of `shard` exists (with a uid other than `not_uid`) and is Ready.
    async fn wait_ready(&self, shard: usize, not_uid: Option<&str>) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(uid) = self.pod_uid(shard).await
                && not_uid != Some(uid.as_str())
            {
                let ready = self
                    .kubectl(&[
                        "get",
                        "pod",
                        self.pod(shard),
                        "-o",
                        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                    ])
                    .await
                    .unwrap_or_default();
                if ready == "True" {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                let describe = self
                    .kubectl(&["describe", "pod", self.pod(shard)])
                    .await
                    .unwrap_or_default();
                bail!(
                    "pod {} not ready after {READY_TIMEOUT:?}\n{describe}",
                    self.pod(shard)
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// (Re)starts `kubectl port-forward` for `shard` and waits until its admin port answers.
    async fn forward(&self, shard: usize) -> anyhow::Result<()> {
        let p = self.ports[shard];
        let mut forwards = self.forwards.lock().await;
        if let Some(mut old) = forwards.remove(&shard) {
            let _ = old.kill().await;
        }
        let mut cmd = Command::new(&self.kubectl);
        // A killed test binary leaves no port-forward behind.
        crate::local::die_with_parent(cmd.as_std_mut());
        let child = cmd
            .args([
                "-n",
                &self.namespace,
                "port-forward",
                "--address",
                "127.0.0.1",
            ])
            .arg(format!("pod/{}", self.pod(shard)))
            .arg(format!("{}:{INGRESS_PORT}", p.ingress))
            .arg(format!("{}:{PEER_PORT}", p.peer))
            .arg(format!("{}:{ADMIN_PORT}", p.admin))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {} port-forward", self.kubectl))?;
        forwards.insert(shard, child);
        drop(forwards);
        let client = Client::new();
        let url = format!("http://127.0.0.1:{}/readyz", p.admin);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match client.get(&url).await {
                Ok(r) if r.status == 200 => return Ok(()),
                other if Instant::now() > deadline => {
                    bail!("{url} through port-forward: {other:?}")
                }
                _ => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
    }
}

#[async_trait]
impl Cluster for KubeCluster {
    fn entries(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{}", p.ingress))
            .collect()
    }

    fn slots(&self) -> u32 {
        self.slots
    }

    fn peer_url(&self, shard: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[shard].peer)
    }

    /// Deletes the pod at once (`--grace-period=0 --force`), like `kill -9`; its StatefulSet
    /// recreates it with the same volume.
    async fn kill(&self, shard: usize) -> anyhow::Result<()> {
        let uid = self
            .pod_uid(shard)
            .await
            .context("pod uid before the kill")?;
        self.killed.lock().await.insert(shard, uid);
        self.kubectl(&[
            "delete",
            "pod",
            self.pod(shard),
            "--grace-period=0",
            "--force",
            "--wait=false",
        ])
        .await?;
        if let Some(mut f) = self.forwards.lock().await.remove(&shard) {
            let _ = f.kill().await;
        }
        Ok(())
    }

    async fn restart(&self, shard: usize) -> anyhow::Result<()> {
        let old = self.killed.lock().await.remove(&shard);
        self.wait_ready(shard, old.as_deref()).await?;
        self.forward(shard).await
    }

    async fn metrics(&self, shard: usize) -> anyhow::Result<String> {
        let url = format!("http://127.0.0.1:{}/metrics", self.ports[shard].admin);
        match Client::new().get(&url).await {
            Ok(r) if r.status == 200 => Ok(r.body),
            other => bail!("GET {url}: {other:?}"),
        }
    }
}

async fn kubectl_text(kubectl: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(kubectl)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("run {kubectl}"))?;
    if !out.status.success() {
        bail!(
            "{kubectl} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

async fn kubectl_json(kubectl: &str, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let text = kubectl_text(kubectl, args).await?;
    serde_json::from_str(&text).with_context(|| format!("{kubectl} {}: not JSON", args.join(" ")))
}

/// Increments objects owned by every shard, deletes shard `victim`'s pod, waits for the
/// StatefulSet to bring it back on the same volume, and checks that every object kept its
/// value, through every entry.
pub async fn objects_survive_a_pod_restart(c: &KubeCluster, victim: usize) {
    let client = Client::new();
    let entries = c.entries();
    let groups = names_by_owner("restart", 2, c.slots(), c.shard_count());
    let mut expected = Vec::new();
    for (k, name) in groups.iter().flatten().enumerate() {
        let n = 3 + k as u64;
        for _ in 0..n {
            let url = object_url(&entries[k % entries.len()], name, "increment");
            let reply = client.post(&url, "").await;
            assert!(
                matches!(&reply, Ok(r) if r.status == 200),
                "POST {url}: {reply:?}"
            );
        }
        expected.push((name.clone(), n));
    }
    c.kill(victim).await.expect("delete the victim's pod");
    c.restart(victim)
        .await
        .expect("the victim's pod comes back");
    for (name, n) in &expected {
        for entry in &entries {
            let url = object_url(entry, name, "value");
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                match client.get(&url).await {
                    Ok(r) if r.status == 200 => {
                        assert_eq!(
                            r.number(),
                            Some(*n),
                            "{name} through {entry} after the restart"
                        );
                        break;
                    }
                    other if Instant::now() > deadline => {
                        panic!("GET {url} after the restart: {other:?}")
                    }
                    _ => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        }
    }
}

/// The kind tier: run by `scripts/kind-e2e.sh` once the counter example is applied
/// (`STEAD_KUBE_NAMESPACE`, default `apps`; `STEAD_KUBE_NAME`, default `counter`).
#[cfg(test)]
mod kind {
    use super::*;
    use crate::scenarios;

    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    async fn cluster() -> KubeCluster {
        let ns = std::env::var("STEAD_KUBE_NAMESPACE").unwrap_or_else(|_| "apps".to_owned());
        let name = std::env::var("STEAD_KUBE_NAME").unwrap_or_else(|_| "counter".to_owned());
        KubeCluster::connect(&ns, &name)
            .await
            .unwrap_or_else(|e| panic!("connect to DurableNamespace {ns}/{name}: {e:#}"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "needs a cluster with the counter example: scripts/kind-e2e.sh"]
    async fn kind_counters_are_exact_through_every_shard() {
        let _turn = ONE_AT_A_TIME.lock().await;
        scenarios::counter_exactness(&cluster().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "needs a cluster with the counter example: scripts/kind-e2e.sh"]
    async fn kind_a_named_object_is_one_object_through_every_entry() {
        let _turn = ONE_AT_A_TIME.lock().await;
        scenarios::one_object_through_every_entry(&cluster().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "needs a cluster with the counter example: scripts/kind-e2e.sh"]
    async fn kind_the_peer_port_refuses_requests_without_the_token() {
        let _turn = ONE_AT_A_TIME.lock().await;
        scenarios::peer_port_requires_the_token(&cluster().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "needs a cluster with the counter example: scripts/kind-e2e.sh"]
    async fn kind_objects_on_different_shards_call_each_other() {
        let _turn = ONE_AT_A_TIME.lock().await;
        scenarios::calls_across_shards(&cluster().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "needs a cluster with the counter example: scripts/kind-e2e.sh"]
    async fn kind_objects_survive_a_pod_restart() {
        let _turn = ONE_AT_A_TIME.lock().await;
        objects_survive_a_pod_restart(&cluster().await, 1).await;
    }
}
