//! Resharding scenarios: a steady counter load while the shard count changes, and the checks
//! that nothing was lost, repeated or served twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;

use crate::client::{Client, Reply};
use crate::cluster::{CLASS, Cluster, object_id};

/// Asks shard 0 to reshard to `shards` and waits until it is done, at most `within`. Keeps
/// asking through what a resharding under faults answers: a failed round (a killed shard), a
/// coordinator that restarted (`idle`) or does not answer. Returns the final progress.
pub async fn reshard(
    c: &dyn Cluster,
    shards: u32,
    within: Duration,
) -> anyhow::Result<serde_json::Value> {
    let client = Client::new();
    let token = c.peer_token().context("the cluster's peer token")?;
    let url = format!("{}/v1/admin/reshard", c.peer_url(0));
    let headers = [("stead-peer-token", token.as_str())];
    let body = format!("{{\"shards\":{shards}}}");
    let deadline = tokio::time::Instant::now() + within;
    let mut asked = false;
    let mut last = serde_json::Value::Null;
    let mut polls = 0u32;
    while tokio::time::Instant::now() < deadline {
        if !asked {
            match client.send("POST", &url, &headers, &body).await {
                Ok(r) if r.status == 202 => asked = true,
                Ok(r) if r.status == 409 => {}
                Ok(r) => anyhow::bail!("POST {url}: {} {}", r.status, r.body),
                Err(_) => {} // shard 0 restarting
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Ok(r) = client.send("GET", &url, &headers, "").await else {
            asked = false;
            continue;
        };
        let p = r.json().context("progress is JSON")?;
        polls += 1;
        if polls.is_multiple_of(100) {
            eprintln!("resharding to {shards}: {p}");
        }
        match p["state"].as_str() {
            Some("done") if p["to"] == shards => return Ok(p),
            Some("running") => {}
            Some("failed") => {
                if p != last {
                    eprintln!("resharding to {shards} failed, asking again: {p}");
                }
                asked = false;
            }
            // idle (coordinator restarted) or done with another target: ask again.
            _ => asked = false,
        }
        last = p;
    }
    anyhow::bail!("resharding to {shards} did not finish within {within:?}: {last}")
}

/// What a shard says it owns.
pub async fn owned_slots(c: &dyn Cluster, shard: usize) -> anyhow::Result<serde_json::Value> {
    let token = c.peer_token().context("the cluster's peer token")?;
    let url = format!("{}/v1/admin/slots", c.peer_url(shard));
    let r = Client::new()
        .send("GET", &url, &[("stead-peer-token", token.as_str())], "")
        .await
        .map_err(anyhow::Error::msg)?;
    anyhow::ensure!(r.status == 200, "{url}: {} {}", r.status, r.body);
    r.json().context("slots are JSON")
}

/// Everything a steady counter load saw.
#[derive(Default)]
pub struct LoadRecord {
    /// Per object name, every value an increment was answered with.
    pub values: HashMap<String, Vec<u64>>,
    pub ok: u64,
    pub unavailable: u64,
    /// Anything other than 2xx or 503 with Retry-After.
    pub unexpected: Vec<String>,
}

/// A counter load over `names`, spread over every entry shard, until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    done: Vec<tokio::task::JoinHandle<LoadRecord>>,
    pub sent: Arc<AtomicU64>,
}

impl Load {
    /// `workers` tasks, each incrementing objects of `names` (round robin from a different
    /// start) through the entries in turn, pausing `pause` between requests.
    pub fn start(
        entries: Vec<String>,
        names: Arc<Vec<String>>,
        workers: usize,
        pause: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let done = (0..workers)
            .map(|w| {
                let stop = stop.clone();
                let sent = sent.clone();
                let names = names.clone();
                let entries = entries.clone();
                tokio::spawn(async move {
                    let client = Client::new();
                    let mut rec = LoadRecord::default();
                    let mut i = w * 7919;
                    while !stop.load(Ordering::SeqCst) {
                        i += 1;
                        let name = &names[i % names.len()];
                        let entry = &entries[(i / names.len() + w) % entries.len()];
                        let url = format!("{entry}/objects/{CLASS}/name/{name}/increment");
                        sent.fetch_add(1, Ordering::Relaxed);
                        record(&mut rec, name, client.post(&url, "").await);
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                    }
                    rec
                })
            })
            .collect();
        Self { stop, done, sent }
    }

    pub async fn stop(self) -> LoadRecord {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = LoadRecord::default();
        for d in self.done {
            let Ok(rec) = d.await else { continue };
            for (k, mut v) in rec.values {
                all.values.entry(k).or_default().append(&mut v);
            }
            all.ok += rec.ok;
            all.unavailable += rec.unavailable;
            all.unexpected.extend(rec.unexpected);
        }
        all
    }
}

fn record(rec: &mut LoadRecord, name: &str, r: Result<Reply, String>) {
    match r {
        Ok(r) if (200..300).contains(&r.status) => match r.number() {
            Some(v) => {
                rec.ok += 1;
                rec.values.entry(name.to_owned()).or_default().push(v);
            }
            None => rec
                .unexpected
                .push(format!("{name}: 2xx without a number: {}", r.body)),
        },
        Ok(r) if r.is_unavailable() => rec.unavailable += 1,
        Ok(r) => rec
            .unexpected
            .push(format!("{name}: {} {}", r.status, r.body)),
        Err(e) => rec.unexpected.push(format!("{name}: {e}")),
    }
}

/// Writes every object once (so that every slot holds data), retrying 503s.
pub async fn seed(c: &dyn Cluster, names: &[String]) -> anyhow::Result<LoadRecord> {
    let client = Client::new();
    let entries = c.entries();
    let mut rec = LoadRecord::default();
    for chunk in names.chunks(64) {
        let replies = futures_util::future::join_all(chunk.iter().enumerate().map(|(i, n)| {
            let url = format!(
                "{}/objects/{CLASS}/name/{n}/increment",
                entries[i % entries.len()]
            );
            let client = client.clone();
            async move { (n.clone(), client.post(&url, "").await) }
        }))
        .await;
        for (n, r) in replies {
            record(&mut rec, &n, r);
        }
    }
    anyhow::ensure!(
        rec.unexpected.is_empty(),
        "seeding failed: {:?}",
        &rec.unexpected[..rec.unexpected.len().min(5)]
    );
    Ok(rec)
}

/// Checks that only 2xx and 503 with Retry-After were answered, and that every object's
/// answered values are exactly 1..=n (no gap, no repeat) and its final value, read through
/// `entry`, is n.
pub async fn check_values(entry: &str, rec: &LoadRecord) -> anyhow::Result<()> {
    anyhow::ensure!(
        rec.unexpected.is_empty(),
        "{} answers were neither 2xx nor 503 with Retry-After, e.g. {:?}",
        rec.unexpected.len(),
        &rec.unexpected[..rec.unexpected.len().min(5)]
    );
    let client = Client::new();
    for (name, values) in &rec.values {
        let mut sorted = values.clone();
        sorted.sort_unstable();
        let expected: Vec<u64> = (1..=values.len() as u64).collect();
        anyhow::ensure!(
            sorted == expected,
            "{name}: answered values are not exactly 1..={}: {:?}",
            values.len(),
            first_difference(&sorted)
        );
        let url = format!("{entry}/objects/{CLASS}/name/{name}/value");
        let v = loop {
            let r = client.get(&url).await.map_err(anyhow::Error::msg)?;
            if r.is_unavailable() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            break r;
        };
        anyhow::ensure!(
            v.number() == Some(values.len() as u64),
            "{name}: value {} after {} acknowledged increments",
            v.body,
            values.len()
        );
    }
    Ok(())
}

/// Checks that every object's answered values are exactly 1..=n (no gap, no repeat), that its
/// final value is n, and that its database exists on exactly one shard.
pub async fn check_exact(c: &dyn Cluster, rec: &LoadRecord) -> anyhow::Result<()> {
    check_values(&c.entries()[0], rec).await?;
    let files = c.database_files().context("database files")?;
    let mut by_id: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for f in files {
        if let Some(id) = f.object_id() {
            by_id.entry(id).or_default().push(f.shard);
        }
    }
    for name in rec.values.keys() {
        let id = object_id(name).to_hex();
        let shards = by_id.get(&id).cloned().unwrap_or_default();
        anyhow::ensure!(
            shards.len() == 1,
            "{name}: its database is on shards {shards:?}, not exactly one"
        );
    }
    Ok(())
}

fn first_difference(sorted: &[u64]) -> String {
    for (i, v) in sorted.iter().enumerate() {
        if *v != i as u64 + 1 {
            return format!(
                "at position {i}: {v} (around {:?})",
                &sorted[i.saturating_sub(2)..(i + 3).min(sorted.len())]
            );
        }
    }
    "none".into()
}

// ---------------- faults during a resharding ----------------

/// Which process a fault scenario kills -9 (and restarts), and when.
#[derive(Debug, Clone, Copy)]
pub enum Victim {
    /// The given shard while it copies a slot to another shard (a slot of it in `copying`).
    SourceCopying(usize),
    /// The first shard while a source asks it to install a slot (a slot moving to it in
    /// `installing`), looking for that among the sources `0..second`.
    TargetInstalling(usize, usize),
    /// Shard 0, which coordinates, once the resharding moved this many slots.
    CoordinatorAfter(usize),
}

impl Victim {
    pub fn shard(self) -> usize {
        match self {
            Self::SourceCopying(s) | Self::TargetInstalling(s, _) => s,
            Self::CoordinatorAfter(_) => 0,
        }
    }
}

/// Waits (up to `within`) for the moment `victim` names, then restarts that shard (`kill -9`
/// of its processes, then a start on the same data). Answers what it saw when it killed.
pub async fn kill_mid_handoff(
    c: &dyn Cluster,
    victim: Victim,
    within: Duration,
) -> anyhow::Result<String> {
    let client = Client::new();
    let token = c.peer_token().context("the cluster's peer token")?;
    let headers = [("stead-peer-token", token.as_str())];
    let get = |shard: usize, path: &'static str| {
        let url = format!("{}{path}", c.peer_url(shard));
        let client = client.clone();
        async move {
            let r = client.send("GET", &url, &headers, "").await.ok()?;
            (r.status == 200).then(|| r.json()).flatten()
        }
    };
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        let seen = match victim {
            Victim::SourceCopying(s) => get(s, "/v1/admin/slots").await.and_then(|v| {
                let m = v["moving"].as_array()?;
                m.iter().find(|m| m["state"] == "copying").cloned()
            }),
            Victim::TargetInstalling(t, sources) => {
                let mut found = None;
                for s in 0..sources {
                    let hit = get(s, "/v1/admin/slots").await.and_then(|v| {
                        let m = v["moving"].as_array()?;
                        m.iter()
                            .find(|m| m["state"] == "installing" && m["to"] == t)
                            .cloned()
                    });
                    if hit.is_some() {
                        found = hit;
                        break;
                    }
                }
                found
            }
            Victim::CoordinatorAfter(n) => get(0, "/v1/admin/reshard")
                .await
                .filter(|p| p["state"] == "running" && p["moved"].as_u64() >= Some(n as u64)),
        };
        if let Some(seen) = seen {
            c.restart(victim.shard())
                .await
                .with_context(|| format!("restart shard {}", victim.shard()))?;
            return Ok(format!("killed shard {} at {seen}", victim.shard()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!("{victim:?} never happened within {within:?}")
}

/// `n` names `{prefix}-{k}` of Counter objects that shard `avoid` owns in none of the rings of
/// `rings` shards (so a load on them never has a request in flight on it).
pub fn names_avoiding(
    prefix: &str,
    n: usize,
    slots: u32,
    rings: &[u32],
    avoid: usize,
) -> Vec<String> {
    (0..)
        .map(|k| format!("{prefix}-{k}"))
        .filter(|name| {
            rings
                .iter()
                .all(|&shards| crate::cluster::owner(name, slots, shards as usize) != avoid)
        })
        .take(n)
        .collect()
}

/// Files left in any shard's `incoming` folder (staged slots nobody will install).
pub fn leftover_staging(root: &std::path::Path, shards: usize) -> Vec<String> {
    let mut out = vec![];
    for i in 0..shards {
        let dir = root
            .join(format!("shard-{i}"))
            .join("data")
            .join("incoming");
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                out.push(format!(
                    "shard {i}: incoming/{}",
                    e.file_name().to_string_lossy()
                ));
            }
        }
    }
    out
}
