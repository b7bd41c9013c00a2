//! The end-to-end scenarios. Each takes any [`Cluster`] and panics with an explanation when the
//! cluster misbehaves. They assert outcomes (statuses, values, files), never durations; where
//! the cluster needs time to settle they poll for up to 30 s.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::client::{Client, Reply};
use crate::cluster::{CLASS, Cluster, metric_sum, names_by_owner, object_id, owner};

const POLL: Duration = Duration::from_millis(200);
/// Eventual consistency: 30 s of polling.
const SETTLE_ATTEMPTS: u32 = 150;
/// Progress under load: generous, the machine may be small and shared.
const PROGRESS_ATTEMPTS: u32 = 600;

/// `{entry}/objects/Counter/name/{name}/{rest}`.
pub fn object_url(entry: &str, name: &str, rest: &str) -> String {
    format!("{entry}/objects/{CLASS}/name/{name}/{rest}")
}

/// A small deterministic generator (xorshift64*), one per client task.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n.max(1)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Polls `check` until it gives `Ok`, for up to `attempts` × 200 ms; panics with the last
/// reason otherwise.
async fn poll<T, F, Fut>(what: &str, attempts: u32, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let mut last = String::new();
    for _ in 0..attempts {
        match check().await {
            Ok(v) => return v,
            Err(why) => last = why,
        }
        tokio::time::sleep(POLL).await;
    }
    panic!(
        "{what}: still not true after {:?}; last: {last}",
        POLL * attempts
    );
}

fn describe(r: &Result<Reply, String>) -> String {
    match r {
        Ok(r) => format!("{} {}", r.status, r.body.trim()),
        Err(e) => format!("no answer: {e}"),
    }
}

/// Names spread over every shard: `count` of them, taken round-robin from each shard's own.
fn spread_names<C: Cluster + ?Sized>(c: &C, prefix: &str, count: usize) -> Vec<String> {
    let shards = c.shard_count();
    let groups = names_by_owner(prefix, count.div_ceil(shards), c.slots(), shards);
    (0..count)
        .map(|k| groups[k % shards][k / shards].clone())
        .collect()
}

/// The sum of a metric over `shards`.
async fn total_metric<C: Cluster + ?Sized>(
    c: &C,
    shards: impl IntoIterator<Item = usize>,
    metric: &str,
    label: &str,
) -> f64 {
    let mut sum = 0.0;
    for i in shards {
        let text = c
            .metrics(i)
            .await
            .unwrap_or_else(|e| panic!("metrics of shard {i}: {e:#}"));
        sum += metric_sum(&text, metric, label);
    }
    sum
}

/// 32 clients each send 100 increments to 20 objects (spread over every shard), each through a
/// random entry shard. Every object's answers must be exactly 1..=n, and every entry must then
/// read n; some requests must have been forwarded.
pub async fn counter_exactness<C: Cluster + ?Sized>(c: &C) {
    const CLIENTS: usize = 32;
    const PER_CLIENT: usize = 100;
    let names = Arc::new(spread_names(c, "exact", 20));
    let entries = Arc::new(c.entries());
    let client = Client::new();
    let mut tasks = JoinSet::new();
    for k in 0..CLIENTS {
        let (names, entries, client) = (names.clone(), entries.clone(), client.clone());
        tasks.spawn(async move {
            let mut rng = Rng::new(k as u64 + 1);
            let mut seen = Vec::with_capacity(PER_CLIENT);
            for _ in 0..PER_CLIENT {
                let name = rng.pick(&names).clone();
                let url = object_url(rng.pick::<String>(&entries), &name, "increment");
                let reply = client.post(&url, "").await;
                match &reply {
                    Ok(r) if r.status == 200 && r.number().is_some() => {
                        seen.push((name, r.number().unwrap_or_default()));
                    }
                    _ => return Err(format!("POST {url}: {}", describe(&reply))),
                }
            }
            Ok(seen)
        });
    }
    let mut by_object: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        let seen = done.expect("client task").unwrap_or_else(|e| panic!("{e}"));
        for (name, v) in seen {
            by_object.entry(name).or_default().push(v);
        }
    }
    let total: usize = by_object.values().map(Vec::len).sum();
    assert_eq!(total, CLIENTS * PER_CLIENT);
    for (name, values) in &mut by_object {
        values.sort_unstable();
        let n = values.len() as u64;
        assert_eq!(*values, (1..=n).collect::<Vec<_>>(), "answers of {name}");
        for entry in entries.iter() {
            let reply = client.get(&object_url(entry, name, "value")).await;
            assert!(
                matches!(&reply, Ok(r) if r.status == 200 && r.number() == Some(n)),
                "{name} through {entry}: expected {n}, got {}",
                describe(&reply)
            );
        }
    }
    let forwards = total_metric(
        c,
        0..c.shard_count(),
        "stead_forwards_total",
        "reason=\"not_owner\"",
    )
    .await;
    assert!(forwards > 0.0, "no request was forwarded to its owner");
    println!(
        "counter exactness: {total} increments over {} objects through {} entries, all exact; {forwards} forwarded",
        by_object.len(),
        entries.len()
    );
}

/// A named object reached through every entry is one object: the same id everywhere (the one
/// the name hashes to), one counter, and (where files are visible) exactly one database file in
/// the whole cluster, on the owner shard.
pub async fn one_object_through_every_entry<C: Cluster + ?Sized>(c: &C) {
    let client = Client::new();
    let name = "same-everywhere";
    let expected_id = object_id(name).to_hex();
    let entries = c.entries();
    for entry in &entries {
        let reply = client.get(&object_url(entry, name, "whoami")).await;
        let who = match &reply {
            Ok(r) if r.status == 200 => r.json().unwrap_or(Value::Null),
            _ => panic!("whoami through {entry}: {}", describe(&reply)),
        };
        assert_eq!(
            who["id"],
            json!(expected_id),
            "whoami through {entry}: {who}"
        );
        assert_eq!(who["class"], json!(CLASS));
        assert_eq!(who["name"], json!(name));
    }
    for (k, entry) in entries.iter().enumerate() {
        let reply = client.post(&object_url(entry, name, "increment"), "").await;
        assert!(
            matches!(&reply, Ok(r) if r.status == 200 && r.number() == Some(k as u64 + 1)),
            "increment {} through {entry}: {}",
            k + 1,
            describe(&reply)
        );
    }
    let Some(files) = c.database_files() else {
        println!("this cluster does not show its volumes: database files not checked");
        return;
    };
    let mine: Vec<_> = files
        .iter()
        .filter(|f| f.object_id().as_deref() == Some(expected_id.as_str()))
        .collect();
    assert_eq!(mine.len(), 1, "database files of {name}: {mine:?}");
    let slot = object_id(name).slot(c.slots());
    assert_eq!(mine[0].shard, owner(name, c.slots(), c.shard_count()));
    let in_slot = format!("slots/{}/{CLASS}/{expected_id}.sqlite", slot.0);
    assert!(
        mine[0].path.ends_with(&in_slot),
        "{} is not under {in_slot}",
        mine[0].path.display()
    );
}

/// What happens to the objects of a killed shard, seen by one client task.
#[derive(Default)]
struct VictimLog {
    /// The highest value acknowledged (200) before the kill.
    max_acked: u64,
    /// Answers after the kill: every one must be 503 + Retry-After.
    unavailable_after_kill: usize,
}

struct LoadState {
    killed: AtomicBool,
    stop: AtomicBool,
    live_acks: AtomicUsize,
    victim_acks: AtomicUsize,
    victim_after_kill: AtomicUsize,
}

/// Increments `name` through live entries until told to stop; any failure is an error.
async fn live_worker(
    name: String,
    live: Arc<Vec<String>>,
    client: Client,
    state: Arc<LoadState>,
    seed: u64,
) -> Result<(String, Vec<u64>), String> {
    let mut rng = Rng::new(seed);
    let mut values = vec![];
    while !state.stop.load(Ordering::SeqCst) {
        let url = object_url(rng.pick::<String>(&live), &name, "increment");
        let reply = client.post(&url, "").await;
        match &reply {
            Ok(r) if r.status == 200 && r.number().is_some() => {
                values.push(r.number().unwrap_or_default());
                state.live_acks.fetch_add(1, Ordering::SeqCst);
            }
            _ => return Err(format!("live object: POST {url}: {}", describe(&reply))),
        }
    }
    Ok((name, values))
}

/// Increments `name` (owned by the victim) through any entry until the kill, then through live
/// entries only, where every answer must be 503 + Retry-After.
async fn victim_worker(
    name: String,
    all: Arc<Vec<String>>,
    live: Arc<Vec<String>>,
    client: Client,
    state: Arc<LoadState>,
    seed: u64,
) -> Result<(String, VictimLog), String> {
    let mut rng = Rng::new(seed);
    let mut log = VictimLog::default();
    while !state.stop.load(Ordering::SeqCst) {
        let killed = state.killed.load(Ordering::SeqCst);
        let entry = rng.pick(if killed {
            live.as_slice()
        } else {
            all.as_slice()
        });
        let url = object_url(entry, &name, "increment");
        let reply = client.post(&url, "").await;
        if !killed {
            // Around the kill anything may happen; only acknowledged values count.
            if let Ok(r) = &reply
                && r.status == 200
            {
                log.max_acked = log.max_acked.max(r.number().unwrap_or_default());
                state.victim_acks.fetch_add(1, Ordering::SeqCst);
            }
            continue;
        }
        match &reply {
            Ok(r) if r.is_unavailable() => {
                log.unavailable_after_kill += 1;
                state.victim_after_kill.fetch_add(1, Ordering::SeqCst);
                // The shard is down; do not spin.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => {
                return Err(format!(
                    "object of the killed shard, after the kill: POST {url}: {} (expected 503 with Retry-After)",
                    describe(&reply)
                ));
            }
        }
    }
    Ok((name, log))
}

async fn wait_for_count(what: &str, counter: &AtomicUsize, at_least: usize) {
    poll(what, PROGRESS_ATTEMPTS, || async {
        let n = counter.load(Ordering::SeqCst);
        if n >= at_least {
            Ok(())
        } else {
            Err(format!("{n} of {at_least}"))
        }
    })
    .await
}

/// `kill -9` shard `victim` while clients increment objects of every shard. Objects of the
/// other shards keep answering 200 through the other entries, with exact values; the victim's
/// objects answer 503 + Retry-After through the other entries until it is restarted; then each
/// holds at least its highest acknowledged value.
pub async fn kill_one_shard_under_load<C: Cluster + ?Sized>(c: &C, victim: usize) {
    let shards = c.shard_count();
    let all = Arc::new(c.entries());
    let live = Arc::new(
        all.iter()
            .enumerate()
            .filter(|(i, _)| *i != victim)
            .map(|(_, e)| e.clone())
            .collect::<Vec<_>>(),
    );
    let groups = names_by_owner("load", 4, c.slots(), shards);
    let client = Client::new();
    let state = Arc::new(LoadState {
        killed: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        live_acks: AtomicUsize::new(0),
        victim_acks: AtomicUsize::new(0),
        victim_after_kill: AtomicUsize::new(0),
    });
    let mut live_tasks = JoinSet::new();
    let mut victim_tasks = JoinSet::new();
    let mut seed = 0;
    for (shard, names) in groups.iter().enumerate() {
        for name in names {
            for _ in 0..2 {
                seed += 1;
                let (n, cl, st) = (name.clone(), client.clone(), state.clone());
                if shard == victim {
                    victim_tasks.spawn(victim_worker(n, all.clone(), live.clone(), cl, st, seed));
                } else {
                    live_tasks.spawn(live_worker(n, live.clone(), cl, st, seed));
                }
            }
        }
    }
    let victim_workers = victim_tasks.len();

    wait_for_count("increments before the kill", &state.live_acks, 100).await;
    wait_for_count("victim increments before the kill", &state.victim_acks, 20).await;
    c.kill(victim).await.expect("kill the victim shard");
    state.killed.store(true, Ordering::SeqCst);
    let at_kill = state.live_acks.load(Ordering::SeqCst);
    wait_for_count("increments after the kill", &state.live_acks, at_kill + 200).await;
    wait_for_count(
        "503s for the victim's objects",
        &state.victim_after_kill,
        2 * victim_workers,
    )
    .await;
    state.stop.store(true, Ordering::SeqCst);

    let mut acked: HashMap<String, Vec<u64>> = HashMap::new();
    while let Some(done) = live_tasks.join_next().await {
        let (name, values) = done.expect("live task").unwrap_or_else(|e| panic!("{e}"));
        acked.entry(name).or_default().extend(values);
    }
    let mut max_acked: HashMap<String, u64> = HashMap::new();
    while let Some(done) = victim_tasks.join_next().await {
        let (name, log) = done.expect("victim task").unwrap_or_else(|e| panic!("{e}"));
        assert!(
            log.unavailable_after_kill > 0,
            "{name}: no answer after the kill"
        );
        let m = max_acked.entry(name).or_default();
        *m = (*m).max(log.max_acked);
    }
    assert!(
        max_acked.values().any(|&m| m > 0),
        "no victim increment was acknowledged"
    );

    // Still down: reads too answer 503 + Retry-After with a JSON error, through every live entry.
    for name in &groups[victim] {
        for entry in live.iter() {
            let reply = client.get(&object_url(entry, name, "value")).await;
            assert!(
                matches!(&reply, Ok(r) if r.is_unavailable()),
                "{name} through {entry} while its shard is down: {}",
                describe(&reply)
            );
        }
    }
    let peer_errors = total_metric(
        c,
        (0..shards).filter(|&i| i != victim),
        "stead_peer_errors_total",
        "",
    )
    .await;
    assert!(
        peer_errors > 0.0,
        "stead_peer_errors_total did not count the dead peer"
    );
    println!(
        "kill -9 shard {victim}: {} increments of live objects ({} after the kill), all 200; {} answers 503 + Retry-After for its objects; highest acknowledged {:?}",
        state.live_acks.load(Ordering::SeqCst),
        state.live_acks.load(Ordering::SeqCst) - at_kill,
        state.victim_after_kill.load(Ordering::SeqCst),
        max_acked
    );

    c.restart(victim).await.expect("restart the victim shard");
    for (name, max) in &max_acked {
        for entry in all.iter() {
            let url = object_url(entry, name, "value");
            let value = poll(
                &format!("{name} through {entry}"),
                SETTLE_ATTEMPTS,
                || async {
                    match client.get(&url).await {
                        Ok(r) if r.status == 200 => r.number().ok_or(r.body),
                        other => Err(describe(&other)),
                    }
                },
            )
            .await;
            assert!(value >= *max, "{name}: {value} < acknowledged {max}");
        }
    }
    for (name, mut values) in acked {
        values.sort_unstable();
        let n = values.len() as u64;
        assert_eq!(values, (1..=n).collect::<Vec<_>>(), "answers of {name}");
        let reply = client.get(&object_url(&all[0], &name, "value")).await;
        assert!(
            matches!(&reply, Ok(r) if r.number() == Some(n)),
            "{name}: expected {n}, got {}",
            describe(&reply)
        );
    }
}

/// Requests straight to a shard's peer port without the peer token, or with a wrong one, get
/// 401 and are not served (the object does not change). Where the test knows the token, the
/// same request with it is served, so the 401s are about the token and nothing else.
pub async fn peer_port_requires_the_token<C: Cluster + ?Sized>(c: &C) {
    let client = Client::new();
    let entries = c.entries();
    let names = names_by_owner("peer", 1, c.slots(), c.shard_count());
    let token = c.peer_token();
    // Increments served with the right token, per object.
    let mut served: HashMap<&str, u64> = HashMap::new();
    for shard in 0..c.shard_count() {
        let peer = c.peer_url(shard);
        // One object owned by this shard, one owned by another.
        let mine = &names[shard][0];
        let others = &names[(shard + 1) % names.len()][0];
        for name in [mine, others] {
            let url = object_url(&peer, name, "increment");
            let none = client.post(&url, "").await;
            assert!(
                matches!(&none, Ok(r) if r.status == 401),
                "{url} without a token: {}",
                describe(&none)
            );
            let wrong = client
                .send("POST", &url, &[("stead-peer-token", "not-the-token")], "")
                .await;
            assert!(
                matches!(&wrong, Ok(r) if r.status == 401),
                "{url} with a wrong token: {}",
                describe(&wrong)
            );
        }
        for name in [mine, others] {
            let expected = served.get(name.as_str()).copied().unwrap_or(0);
            let reply = client.get(&object_url(&entries[0], name, "value")).await;
            assert!(
                matches!(&reply, Ok(r) if r.status == 200 && r.number() == Some(expected)),
                "{name}: refused requests must not reach the object (expected {expected}): {}",
                describe(&reply)
            );
        }
        if let Some(token) = &token {
            let url = object_url(&peer, mine, "increment");
            let right = client
                .send("POST", &url, &[("stead-peer-token", token)], "")
                .await;
            assert!(
                matches!(&right, Ok(r) if r.status == 200 && r.number() == Some(1)),
                "{url} with the right token: {}",
                describe(&right)
            );
            *served.entry(mine.as_str()).or_default() += 1;
        }
    }
}

/// Objects on different shards call each other: A → B and A → B → C work through every entry;
/// A → B → A answers 508 (a cycle) instead of hanging, and the objects stay usable.
pub async fn calls_across_shards<C: Cluster + ?Sized>(c: &C) {
    let shards = c.shard_count();
    assert!(shards >= 2, "needs two shards");
    let names = names_by_owner("chain", 1, c.slots(), shards);
    let (a, b) = (&names[0][0], &names[1][0]);
    let third = &names[2 % shards][0];
    let client = Client::new();
    let entries = c.entries();
    for (k, entry) in entries.iter().enumerate() {
        let url = object_url(entry, a, &format!("chain?next={b}"));
        let reply = client.post(&url, "").await;
        assert!(
            matches!(&reply, Ok(r) if r.status == 200 && r.number() == Some(k as u64 + 1)),
            "{url}: expected {}, got {}",
            k + 1,
            describe(&reply)
        );
    }
    if third != a && third != b {
        let url = object_url(&entries[0], a, &format!("chain?next={b},{third}"));
        let reply = client.post(&url, "").await;
        assert!(
            matches!(&reply, Ok(r) if r.status == 200 && r.number() == Some(1)),
            "{url}: {}",
            describe(&reply)
        );
    }
    for entry in &entries {
        let url = object_url(entry, a, &format!("chain?next={b},{a}"));
        let reply = client.post(&url, "").await;
        assert!(
            matches!(&reply, Ok(r) if r.status == 508),
            "{url}: expected 508 for the cycle, got {}",
            describe(&reply)
        );
    }
    // Nothing is left busy: the same chain works again.
    let url = object_url(&entries[0], a, &format!("chain?next={b}"));
    let reply = client.post(&url, "").await;
    assert!(
        matches!(&reply, Ok(r) if r.status == 200 && r.number() == Some(entries.len() as u64 + 1)),
        "{url} after the cycle: {}",
        describe(&reply)
    );
}

/// Many deep call chains whose hops cross shards, on sidecars with very few concurrent-turn
/// permits (start the cluster with `--max-concurrent-turns 2` and a short turn timeout): every
/// chain completes with its leaf's first increment, no turn times out, and an unrelated object
/// answers meanwhile. A turn waiting on a callee, here or on another shard, holds no permit.
pub async fn deep_chains_across_shards<C: Cluster + ?Sized>(c: &C, chains: usize, depth: usize) {
    let entries = Arc::new(c.entries());
    let client = Client::new();
    let mut tasks = JoinSet::new();
    for k in 0..chains {
        let (entries, client) = (entries.clone(), client.clone());
        tasks.spawn(async move {
            let rest = (1..depth)
                .map(|d| format!("deep-{k}-{d}"))
                .collect::<Vec<_>>()
                .join(",");
            let entry = &entries[k % entries.len()];
            let url = object_url(entry, &format!("deep-{k}-0"), &format!("chain?next={rest}"));
            (url.clone(), client.post(&url, "").await)
        });
    }
    let unrelated = client
        .get(&object_url(&entries[0], "deep-unrelated", "value"))
        .await;
    assert!(
        matches!(&unrelated, Ok(r) if r.status == 200 && r.number() == Some(0)),
        "an unrelated object while the chains run: {}",
        describe(&unrelated)
    );
    while let Some(done) = tasks.join_next().await {
        let (url, reply) = done.expect("chain task");
        assert!(
            matches!(&reply, Ok(r) if r.status == 200 && r.number() == Some(1)),
            "{url}: {}",
            describe(&reply)
        );
    }
    let timed_out = total_metric(c, 0..c.shard_count(), "stead_turns_timed_out_total", "").await;
    assert_eq!(timed_out, 0.0, "turns timed out");
}

/// The register history of one object: the last acknowledged write and the writes attempted
/// after it without an acknowledgement (any of which may have happened).
#[derive(Debug, Default, Clone)]
struct Register {
    acked: Value,
    unacked: Vec<Value>,
}

impl Register {
    fn ack(&mut self, v: Value) {
        self.acked = v;
        self.unacked.clear();
    }

    fn allows(&self, v: &Value) -> bool {
        *v == self.acked || self.unacked.contains(v)
    }
}

async fn put_raw(client: &Client, entry: &str, name: &str, value: &Value) -> Result<Reply, String> {
    let body = json!({"key": "v", "value": value}).to_string();
    client
        .post(&object_url(entry, name, "put-raw"), &body)
        .await
}

async fn get_raw(client: &Client, entry: &str, name: &str) -> Result<Reply, String> {
    client.get(&object_url(entry, name, "get-raw?key=v")).await
}

/// Writes a fresh value to every object through every entry in `through`; all must succeed.
async fn write_round(
    client: &Client,
    through: &[String],
    names: &[String],
    registers: &mut HashMap<String, Register>,
    round: &str,
) {
    for entry in through {
        for name in names {
            let value = json!(format!("{name}@{round}@{entry}"));
            let reply = put_raw(client, entry, name, &value).await;
            assert!(
                matches!(&reply, Ok(r) if r.status == 200),
                "{round}: put {name} through {entry}: {}",
                describe(&reply)
            );
            registers.entry(name.clone()).or_default().ack(value);
        }
    }
}

/// Reads every object through every entry in `through`; each must return its last
/// acknowledged write (or, after `lenient`, a later unacknowledged one).
async fn read_round(
    client: &Client,
    through: &[String],
    names: &[String],
    registers: &HashMap<String, Register>,
    round: &str,
) {
    for entry in through {
        for name in names {
            let reply = get_raw(client, entry, name).await;
            let got = match &reply {
                Ok(r) if r.status == 200 => r.json().unwrap_or(Value::Null),
                _ => panic!("{round}: get {name} through {entry}: {}", describe(&reply)),
            };
            let reg = &registers[name];
            assert!(
                reg.allows(&got),
                "{round}: {name} through {entry} read {got}, but the last acknowledged write is {} (unacknowledged since: {:?})",
                reg.acked,
                reg.unacked
            );
        }
    }
}

/// Cuts shard `cut` off the network while it keeps running. No object is ever served by two
/// shards: the other shards keep serving their own objects with the last acknowledged writes,
/// answer 503 + Retry-After for the cut shard's objects (never a value), and once the link is
/// back every object reads its last acknowledged write (or a write attempted during the cut)
/// through every entry, and takes new writes.
pub async fn partition_keeps_one_owner<C: Cluster + ?Sized>(c: &C, cut: usize) {
    assert!(c.can_partition(), "this cluster cannot be partitioned");
    let shards = c.shard_count();
    let all = c.entries();
    let live: Vec<String> = all
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != cut)
        .map(|(_, e)| e.clone())
        .collect();
    let groups = names_by_owner("reg", 3, c.slots(), shards);
    let names: Vec<String> = groups.concat();
    let cut_names = groups[cut].clone();
    let live_names: Vec<String> = names
        .iter()
        .filter(|n| !cut_names.contains(n))
        .cloned()
        .collect();
    let client = Client::new();
    let mut registers: HashMap<String, Register> = HashMap::new();

    write_round(&client, &all, &names, &mut registers, "before the cut").await;
    read_round(&client, &all, &names, &registers, "before the cut").await;

    c.isolate(cut).await.expect("cut the shard's link");
    println!(
        "partition: shard {cut} cut off; {} of its objects",
        cut_names.len()
    );
    // The cut shard's objects: through other entries, 503 + Retry-After, never a value.
    for name in &cut_names {
        for entry in &live {
            let url = object_url(entry, name, "get-raw?key=v");
            poll(
                &format!("503 for {name} through {entry}"),
                SETTLE_ATTEMPTS,
                || async {
                    let reply = client.get(&url).await;
                    match &reply {
                        Ok(r) if r.is_unavailable() => Ok(()),
                        Ok(r) if r.status == 200 => panic!(
                            "{name} was served through {entry} while its shard is cut off: {}",
                            r.body
                        ),
                        _ => Err(describe(&reply)),
                    }
                },
            )
            .await;
        }
    }
    // Writes during the cut: the other shards' objects take them; the cut shard's refuse them.
    write_round(
        &client,
        &live,
        &live_names,
        &mut registers,
        "during the cut",
    )
    .await;
    let mut attempts = JoinSet::new();
    for name in &cut_names {
        for entry in &live {
            let value = json!(format!("{name}@during the cut@{entry}"));
            registers
                .entry(name.clone())
                .or_default()
                .unacked
                .push(value.clone());
            let (client, entry, name) = (client.clone(), entry.clone(), name.clone());
            attempts.spawn(async move {
                let reply = put_raw(&client, &entry, &name, &value).await;
                (name, entry, reply)
            });
        }
    }
    while let Some(done) = attempts.join_next().await {
        let (name, entry, reply) = done.expect("write task");
        assert!(
            matches!(&reply, Ok(r) if r.status != 200),
            "a write to {name} through {entry} was acknowledged while its shard is cut off: {}",
            describe(&reply)
        );
    }
    read_round(&client, &live, &live_names, &registers, "during the cut").await;
    for name in &cut_names {
        for entry in &live {
            let reply = get_raw(&client, entry, name).await;
            assert!(
                matches!(&reply, Ok(r) if r.is_unavailable()),
                "{name} through {entry} during the cut: {}",
                describe(&reply)
            );
        }
    }

    c.heal(cut).await.expect("restore the shard's link");
    println!(
        "partition: during the cut, the other shards served their objects and answered 503 for shard {cut}'s; link restored"
    );
    for name in &names {
        for entry in &all {
            let url = object_url(entry, name, "get-raw?key=v");
            let got = poll(
                &format!("{name} through {entry} after healing"),
                SETTLE_ATTEMPTS,
                || async {
                    match client.get(&url).await {
                        Ok(r) if r.status == 200 => r.json().ok_or(r.body),
                        other => Err(describe(&other)),
                    }
                },
            )
            .await;
            assert!(
                registers[name].allows(&got),
                "{name} through {entry} after healing read {got}; allowed: {:?}",
                registers[name]
            );
        }
    }
    write_round(&client, &all, &names, &mut registers, "after healing").await;
    read_round(&client, &all, &names, &registers, "after healing").await;
    if let Some(files) = c.database_files() {
        for name in &names {
            let id = object_id(name).to_hex();
            let holders: Vec<_> = files
                .iter()
                .filter(|f| f.object_id().as_deref() == Some(id.as_str()))
                .collect();
            assert_eq!(holders.len(), 1, "database files of {name}: {holders:?}");
        }
    }
    println!(
        "partition: after healing, every object reads an allowed value through every entry and takes new writes"
    );
}
