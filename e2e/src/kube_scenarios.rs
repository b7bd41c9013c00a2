//! Scenarios that only a Kubernetes cluster has: the client Service, a pod deleted with
//! `--grace-period=0 --force` under load, `helm upgrade` of the operator under load, the chat's
//! WebSocket through its Service, every pod's `/metrics` through Prometheus's linter, and a
//! change of `spec.shards` under load. Both Kubernetes tiers run them (`scripts/node-e2e.sh`,
//! `scripts/kind-e2e.sh`) through [`KubeCluster`].

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::AsyncWriteExt as _;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

use crate::client::Client;
use crate::cluster::{Cluster, names_by_owner};
use crate::kube::{KubeCluster, kubectl_json};
use crate::local::free_port;
use crate::reshard::{Load, LoadRecord, check_values};
use crate::scenarios::object_url;

/// A Service reached from this machine: at its cluster IP where that is routed here (the
/// one-node tier), else through `kubectl port-forward svc/...` (kind).
pub struct ServiceEntry {
    pub url: String,
    _forward: Option<Child>,
}

impl ServiceEntry {
    pub async fn open(kubectl: &str, namespace: &str, name: &str) -> anyhow::Result<Self> {
        let svc = kubectl_json(
            kubectl,
            &["-n", namespace, "get", "service", name, "-o", "json"],
        )
        .await?;
        let ip = svc["spec"]["clusterIP"]
            .as_str()
            .context("spec.clusterIP")?
            .to_owned();
        let port = svc["spec"]["ports"][0]["port"]
            .as_u64()
            .context("spec.ports[0].port")?;
        let direct = format!("{ip}:{port}");
        if reachable(&direct).await {
            return Ok(Self {
                url: format!("http://{direct}"),
                _forward: None,
            });
        }
        let local = free_port()?;
        let mut cmd = Command::new(kubectl);
        crate::local::die_with_parent(cmd.as_std_mut());
        let child = cmd
            .args(["-n", namespace, "port-forward", "--address", "127.0.0.1"])
            .arg(format!("svc/{name}"))
            .arg(format!("{local}:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {kubectl} port-forward svc/{name}"))?;
        let addr = format!("127.0.0.1:{local}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !reachable(&addr).await {
            ensure!(
                Instant::now() < deadline,
                "port-forward of svc/{name} never listened"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(Self {
            url: format!("http://{addr}"),
            _forward: Some(child),
        })
    }
}

async fn reachable(addr: &str) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// Object names no earlier run on the same cluster used.
fn fresh_names(prefix: &str, n: usize) -> Arc<Vec<String>> {
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    Arc::new((0..n).map(|i| format!("{prefix}-{run}-{i}")).collect())
}

/// Waits until `sent` increments were sent by the load.
async fn wait_sent(load: &Load, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while load.sent.load(std::sync::atomic::Ordering::Relaxed) < at_least
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Counters incremented by many clients through the client Service: every answer is 2xx, every
/// object's answered values are exactly 1..n and its final value is n.
pub async fn counters_are_exact_through_the_service(service: &ServiceEntry) {
    let names = fresh_names("svc", 40);
    let load = Load::start(vec![service.url.clone()], names, 8, Duration::ZERO);
    wait_sent(&load, 2_000).await;
    let rec = load.stop().await;
    assert!(
        rec.ok >= 1_000,
        "only {} increments were answered 2xx",
        rec.ok
    );
    check_values(&service.url, &rec)
        .await
        .expect("exact counters through the Service");
}

/// A shard pod deleted with `--grace-period=0 --force` while clients increment through the
/// Service: no acknowledged increment is lost (each object's answered values are distinct, and
/// its final value is at least the highest one), and the objects of the deleted pod answer again
/// with their values, kept on its volume.
pub async fn a_force_deleted_pod_loses_no_acknowledged_write(
    c: &KubeCluster,
    service: &ServiceEntry,
    victim: usize,
) {
    let names = names_by_owner("force", 4, c.slots(), c.shard_count())
        .into_iter()
        .flatten()
        .collect::<Vec<_>>();
    let load = Load::start(
        vec![service.url.clone()],
        Arc::new(names),
        8,
        Duration::from_millis(5),
    );
    wait_sent(&load, 500).await;
    c.kill(victim).await.expect("force-delete the victim's pod");
    c.restart(victim)
        .await
        .expect("the StatefulSet brings the pod back");
    let after = load.sent.load(std::sync::atomic::Ordering::Relaxed);
    wait_sent(&load, after + 500).await;
    let rec = load.stop().await;
    eprintln!(
        "force delete under load: {} acknowledged, {} unavailable, {} failed while the pod was away",
        rec.ok,
        rec.unavailable,
        rec.unexpected.len()
    );
    check_no_acknowledged_write_lost(&service.url, &rec).await;
}

/// Each object's acknowledged values are distinct and its value now is at least the highest:
/// an acknowledged increment that was lost would let a later one answer the same value again.
/// (An increment whose answer was lost with the pod may still have committed: the final value
/// may exceed the acknowledged count, never fall below it.)
async fn check_no_acknowledged_write_lost(entry: &str, rec: &LoadRecord) {
    let client = Client::new();
    for (name, values) in &rec.values {
        let mut sorted = values.clone();
        sorted.sort_unstable();
        let distinct = sorted.windows(2).all(|w| w[0] != w[1]);
        assert!(
            distinct,
            "{name}: a value was acknowledged twice: {sorted:?}"
        );
        let url = object_url(entry, name, "value");
        let deadline = Instant::now() + Duration::from_secs(60);
        let now = loop {
            match client.get(&url).await {
                Ok(r) if r.status == 200 => break r.number().expect("a number"),
                other if Instant::now() > deadline => panic!("GET {url}: {other:?}"),
                _ => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        };
        let highest = sorted.last().copied().unwrap_or(0);
        assert!(
            now >= highest && now >= values.len() as u64,
            "{name}: value {now} after {} acknowledged increments (highest {highest})",
            values.len()
        );
    }
}

/// `helm upgrade` of the operator (its pod replaced) while clients increment through the
/// Service: the data path never notices (only 2xx or 503 with Retry-After, exact counters).
pub async fn helm_upgrade_during_load_keeps_counters_exact(service: &ServiceEntry, upgrade: &str) {
    let names = fresh_names("upgrade", 20);
    let load = Load::start(
        vec![service.url.clone()],
        names,
        4,
        Duration::from_millis(5),
    );
    wait_sent(&load, 200).await;
    let out = Command::new("sh")
        .args(["-c", upgrade])
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run the helm upgrade");
    let before = load.sent.load(std::sync::atomic::Ordering::Relaxed);
    wait_sent(&load, before + 200).await;
    let rec = load.stop().await;
    assert!(
        out.status.success(),
        "{upgrade}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    check_values(&service.url, &rec)
        .await
        .expect("exact counters across the upgrade");
}

/// Two WebSockets into one chat room through the chat's Service: a message sent on one is
/// broadcast to both, with the room's sequence number.
pub async fn chat_websockets_through_the_service(service: &ServiceEntry) {
    let room = fresh_names("room", 1)[0].clone();
    let ws = service.url.replacen("http://", "ws://", 1);
    let mut sockets = Vec::new();
    for who in ["ann", "bob"] {
        let url = format!("{ws}/objects/ChatRoom/name/{room}/ws?name={who}");
        let (socket, _) = tokio::time::timeout(
            Duration::from_secs(20),
            tokio_tungstenite::connect_async(&url),
        )
        .await
        .unwrap_or_else(|_| panic!("connect {url}: timed out"))
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        sockets.push(socket);
    }
    let text = format!("hello from ann in {room}");
    sockets[0]
        .send(Message::text(text.clone()))
        .await
        .expect("send");
    for (i, socket) in sockets.iter_mut().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = tokio::time::timeout(left, socket.next())
                .await
                .unwrap_or_else(|_| panic!("socket {i}: no broadcast of {text:?}"));
            let Some(Ok(Message::Text(got))) = msg else {
                continue;
            };
            let json: serde_json::Value = serde_json::from_str(got.as_str()).expect("JSON message");
            if json["text"] == text.as_str() {
                assert_eq!(json["name"], "ann", "socket {i}: {json}");
                assert_eq!(
                    json["seq"], 1,
                    "socket {i}: the room's first message: {json}"
                );
                break;
            }
        }
    }
    for mut s in sockets {
        let _ = s.close(None).await;
    }
}

/// The chat page through the Service, outside `/objects/`: the app's stateless front door (a
/// Workers app's `export default { fetch }`) answers it. Retried for a while: a pod that just
/// became Ready may still be starting its app.
pub async fn chat_page_through_the_service(service: &ServiceEntry) {
    let client = Client::new();
    let url = format!("{}/", service.url);
    let deadline = Instant::now() + Duration::from_secs(60);
    let reply = loop {
        match client.get(&url).await {
            Ok(r) if r.status == 200 => break r,
            other if Instant::now() > deadline => panic!("GET {url}: {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    assert!(
        reply.body.contains("<title>Stead chat</title>"),
        "GET {url}: not the chat page: {}",
        reply.body.chars().take(300).collect::<String>()
    );
}

/// Runs Prometheus's linter (`promtool check metrics`'s code: `STEAD_PROMLINT`) over a scrape.
pub async fn lint_metrics(promlint: &str, what: &str, text: &str) {
    assert!(
        text.contains("# TYPE "),
        "{what}: no metrics in its scrape:\n{text}"
    );
    let mut child = Command::new(promlint)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("run {promlint}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(text.as_bytes())
        .await
        .expect("write the scrape");
    drop(stdin);
    let out = child.wait_with_output().await.expect("promlint");
    assert!(
        out.status.success(),
        "{what}: Prometheus's linter found problems:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sets `spec.shards` of the DurableNamespace and waits until the operator reports the ring at
/// that size with nothing moving and every shard ready.
pub async fn set_shards(
    c: &KubeCluster,
    name: &str,
    shards: usize,
    within: Duration,
) -> anyhow::Result<()> {
    let patch = format!("{{\"spec\":{{\"shards\":{shards}}}}}");
    c.kubectl_in_namespace(&[
        "patch",
        "durablenamespace",
        name,
        "--type",
        "merge",
        "-p",
        &patch,
    ])
    .await?;
    let deadline = Instant::now() + within;
    let mut last = serde_json::Value::Null;
    loop {
        let dn = kubectl_json(
            c.kubectl_path(),
            &[
                "-n",
                c.namespace(),
                "get",
                "durablenamespace",
                name,
                "-o",
                "json",
            ],
        )
        .await?;
        let status = &dn["status"];
        let ready = status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        if status["ring"]["shards"] == shards
            && status["ring"]["moving"] == 0
            && status["readyShards"] == shards
            && ready
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{name} did not reach {shards} shards within {within:?}: {}",
                status
            );
        }
        if *status != last {
            eprintln!("{name} towards {shards} shards: {}", status["ring"]);
            last = status.clone();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The counter namespace resharded 3 → 5 → 2 → 3 by editing `spec.shards` while clients
/// increment through the Service: only 2xx or 503 with Retry-After, exact counters.
pub async fn reshards_under_load_keep_counters_exact(
    c: &KubeCluster,
    name: &str,
    service: &ServiceEntry,
) {
    let names = fresh_names("reshard", 200);
    let load = Load::start(
        vec![service.url.clone()],
        names,
        6,
        Duration::from_millis(2),
    );
    wait_sent(&load, 300).await;
    let mut seen = HashMap::new();
    for shards in [5, 2, c.shard_count()] {
        set_shards(c, name, shards, Duration::from_secs(600))
            .await
            .unwrap_or_else(|e| panic!("reshard to {shards}: {e:#}"));
        seen.insert(shards, load.sent.load(std::sync::atomic::Ordering::Relaxed));
    }
    let rec = load.stop().await;
    eprintln!(
        "reshard under load: {} acknowledged, {} answered 503 (sent at each size: {seen:?})",
        rec.ok, rec.unavailable
    );
    check_values(&service.url, &rec)
        .await
        .expect("exact counters across 3 -> 5 -> 2 -> 3");
}
