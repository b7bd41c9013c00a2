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

    /// The Kubernetes namespace of the `DurableNamespace`.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The `kubectl` binary this cluster is driven with.
    pub fn kubectl_path(&self) -> &str {
        &self.kubectl
    }

    /// Runs `kubectl -n {namespace} ARGS` and returns its stdout.
    pub async fn kubectl_in_namespace(&self, args: &[&str]) -> anyhow::Result<String> {
        self.kubectl(args).await
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

pub(crate) async fn kubectl_json(
    kubectl: &str,
    args: &[&str],
) -> anyhow::Result<serde_json::Value> {
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

/// The Kubernetes tiers: run by `scripts/node-e2e.sh` (a real one-node cluster on this machine)
/// and `scripts/kind-e2e.sh` (kind, where Docker exists), once the counter and chat examples (the
/// Rust chat and its TypeScript twin) are applied. Environment: `STEAD_KUBE_NAMESPACE` (default `apps`), `STEAD_KUBE_NAME` (`counter`),
/// `STEAD_KUBE_CHAT` (`chat`), `STEAD_KUBE_WORKERS_CHAT` (`chat-ts`: the TypeScript chat, built
/// from the Dockerfile `stead init` writes), `STEAD_KUBE_OPERATOR_NAMESPACE` (`stead-system`),
/// `STEAD_KUBE_HELM_UPGRADE` (the `helm upgrade` command line to run under load),
/// `STEAD_PROMLINT` (Prometheus's metrics linter; `scripts/node-tools.sh` builds it).
#[cfg(test)]
mod tier {
    use super::*;
    use crate::kube_scenarios::{self as k, ServiceEntry};
    use crate::scenarios;

    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    fn var(name: &str, default: &str) -> String {
        std::env::var(name).unwrap_or_else(|_| default.to_owned())
    }

    fn required(name: &str) -> String {
        std::env::var(name)
            .unwrap_or_else(|_| panic!("{name} is not set (scripts/node-e2e.sh sets it)"))
    }

    async fn connect(name: &str) -> KubeCluster {
        let ns = var("STEAD_KUBE_NAMESPACE", "apps");
        KubeCluster::connect(&ns, name)
            .await
            .unwrap_or_else(|e| panic!("connect to DurableNamespace {ns}/{name}: {e:#}"))
    }

    async fn cluster() -> KubeCluster {
        connect(&var("STEAD_KUBE_NAME", "counter")).await
    }

    async fn service(c: &KubeCluster, name: &str) -> ServiceEntry {
        ServiceEntry::open(c.kubectl_path(), c.namespace(), name)
            .await
            .unwrap_or_else(|e| panic!("reach Service {name}: {e:#}"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "needs a cluster with the examples: scripts/node-e2e.sh or scripts/kind-e2e.sh"]
    async fn kube_counters_are_exact_through_every_shard() {
        let _turn = ONE_AT_A_TIME.lock().await;
        scenarios::counter_exactness(&cluster().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "needs a cluster with the examples: scripts/node-e2e.sh or scripts/kind-e2e.sh"]
    async fn kube_counters_are_exact_through_the_client_service() {
        let _turn = ONE_AT_A_TIME.lock().await;
        let c = cluster().await;
        let svc = service(&c, &var("STEAD_KUBE_NAME", "counter")).await;
        k::counters_are_exact_through_the_service(&svc).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "needs a cluster with the examples: scripts/node-e2e.sh or scripts/kind-e2e.sh"]
    async fn kube_a_named_object_is_one_object_through_every_entry() {
        let _turn = ONE_AT_A_TIME.lock().await;
        scenarios::one_object_through_every_entry(&cluster().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "needs a cluster with the examples: scripts/node-e2e.sh or scripts/kind-e2e.sh"]
    async fn kube_the_peer_port_refuses_requests_without_the_token() {
        let _turn = ONE_AT_A_TIME.lock().await;
        scenarios::peer_port_requires_the_token(&cluster().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "needs a cluster with the examples: scripts/node-e2e.sh or scripts/kind-e2e.sh"]
    async fn kube_objects_on_different_shards_call_each_other() {
        let _turn = ONE_AT_A_TIME.lock().await;
        scenarios::calls_across_shards(&cluster().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "needs a cluster with the examples: scripts/node-e2e.sh or scripts/kind-e2e.sh"]
    async fn kube_objects_survive_a_pod_restart() {
        let _turn = ONE_AT_A_TIME.lock().await;
        objects_survive_a_pod_restart(&cluster().await, 1).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "needs a cluster with the examples: scripts/node-e2e.sh or scripts/kind-e2e.sh"]
    async fn kube_a_force_deleted_pod_loses_no_acknowledged_write() {
        let _turn = ONE_AT_A_TIME.lock().await;
        let c = cluster().await;
        let svc = service(&c, &var("STEAD_KUBE_NAME", "counter")).await;
        k::a_force_deleted_pod_loses_no_acknowledged_write(&c, &svc, 2).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "needs a cluster with the examples: scripts/node-e2e.sh or scripts/kind-e2e.sh"]
    async fn kube_helm_upgrade_during_load_keeps_counters_exact() {
        let _turn = ONE_AT_A_TIME.lock().await;
        let c = cluster().await;
        let svc = service(&c, &var("STEAD_KUBE_NAME", "counter")).await;
        k::helm_upgrade_during_load_keeps_counters_exact(
            &svc,
            &required("STEAD_KUBE_HELM_UPGRADE"),
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "needs a cluster with the examples: scripts/node-e2e.sh or scripts/kind-e2e.sh"]
    async fn kube_chat_websockets_work_through_the_service() {
        let _turn = ONE_AT_A_TIME.lock().await;
        let chat = connect(&var("STEAD_KUBE_CHAT", "chat")).await;
        let svc = service(&chat, &var("STEAD_KUBE_CHAT", "chat")).await;
        k::chat_websockets_through_the_service(&svc).await;
    }

    /// The chat runs with `storage.sync: volume` (the tier's scripts apply it so): a message in
    /// a room is acknowledged after a sync of the shard's volume, counted by the chat's
    /// sidecars; the counter, on the default `file`, never syncs its volume.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "needs a cluster with the examples: scripts/node-e2e.sh or scripts/kind-e2e.sh"]
    async fn kube_only_the_chat_syncs_its_volume() {
        let _turn = ONE_AT_A_TIME.lock().await;
        let chat = connect(&var("STEAD_KUBE_CHAT", "chat")).await;
        let svc = service(&chat, &var("STEAD_KUBE_CHAT", "chat")).await;
        k::chat_websockets_through_the_service(&svc).await;
        let volume_synced = |c: KubeCluster| async move {
            let mut commits = 0.0;
            for shard in 0..c.shard_count() {
                let text = c.metrics(shard).await.expect("scrape the shard");
                commits +=
                    crate::cluster::metric_sum(&text, "stead_volume_synced_commits_total", "");
            }
            commits
        };
        let chat_commits = volume_synced(chat).await;
        assert!(
            chat_commits >= 1.0,
            "the chat's sidecars made no commit durable by a volume sync ({chat_commits}): is its storage.sync volume?"
        );
        let counter_commits = volume_synced(cluster().await).await;
        assert_eq!(
            counter_commits, 0.0,
            "the counter (storage.sync: file) synced its volume for {counter_commits} commits"
        );
    }

    /// The TypeScript chat (examples/chat-ts), its image built from the Dockerfile `stead init`
    /// wrote for it and applied with the manifest `stead init` wrote: its Worker serves the
    /// page, and its Durable Object the same WebSocket protocol as the Rust chat.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "needs a cluster with the examples: scripts/node-e2e.sh or scripts/kind-e2e.sh"]
    async fn kube_a_workers_chat_works_through_its_service() {
        let _turn = ONE_AT_A_TIME.lock().await;
        let name = var("STEAD_KUBE_WORKERS_CHAT", "chat-ts");
        let chat = connect(&name).await;
        let svc = service(&chat, &name).await;
        k::chat_page_through_the_service(&svc).await;
        k::chat_websockets_through_the_service(&svc).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "needs a cluster with the examples: scripts/node-e2e.sh or scripts/kind-e2e.sh"]
    async fn kube_every_pods_metrics_pass_prometheus_lint() {
        let _turn = ONE_AT_A_TIME.lock().await;
        let promlint = required("STEAD_PROMLINT");
        for name in [
            var("STEAD_KUBE_NAME", "counter"),
            var("STEAD_KUBE_CHAT", "chat"),
            var("STEAD_KUBE_WORKERS_CHAT", "chat-ts"),
        ] {
            let c = connect(&name).await;
            for shard in 0..c.shard_count() {
                let text = c.metrics(shard).await.expect("scrape the shard");
                k::lint_metrics(&promlint, c.pod(shard), &text).await;
            }
        }
        let c = cluster().await;
        let ns = var("STEAD_KUBE_OPERATOR_NAMESPACE", "stead-system");
        let svc = ServiceEntry::open(c.kubectl_path(), &ns, "stead-operator-metrics")
            .await
            .expect("reach the operator's metrics Service");
        let url = format!("{}/metrics", svc.url);
        let scrape = crate::client::Client::new()
            .get(&url)
            .await
            .expect("scrape the operator");
        assert_eq!(scrape.status, 200, "GET {url}: {}", scrape.body);
        k::lint_metrics(&promlint, "the operator", &scrape.body).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "needs a cluster with the examples: scripts/node-e2e.sh or scripts/kind-e2e.sh"]
    async fn kube_resharding_three_five_two_three_under_load_keeps_counters_exact() {
        let _turn = ONE_AT_A_TIME.lock().await;
        let name = var("STEAD_KUBE_NAME", "counter");
        let c = cluster().await;
        let svc = service(&c, &name).await;
        k::reshards_under_load_keep_counters_exact(&c, &name, &svc).await;
    }
}
