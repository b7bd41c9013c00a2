//! Kill cycles: rounds of `kill -9` of a random sidecar or app of a [`LocalCluster`] under mixed
//! load, each process started again after a short downtime, then a check of the whole history.
//!
//! The load: increments of a few hundred named counters and of one hot counter that many clients
//! increment at once (its turns are pipelined and share commits), alarms set a few hundred ms ahead on
//! other counters, and WebSocket clients chatting in a room or two of a second cluster running the
//! chat example. What must hold at the end:
//!
//! - counters: every answered value is distinct; the final value is at least every answered value
//!   (nothing acknowledged is lost), at least the number of answers and at most the number of
//!   attempts (an increment that got an error or no answer may or may not have applied); with no
//!   such increment, the answers are exactly `1..=final`;
//! - alarms: every object whose alarm was set fires at least once, and fires at most once per set
//!   (no flood after a downtime);
//! - chat: the history holds `seq` exactly `1..=M`, each message at most once, only messages that
//!   were sent, and every message a client received (broadcast after commit) is in it with the
//!   same `seq`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::client::Client;
use crate::cluster::Cluster as _;
use crate::local::{LocalCluster, Process};
use crate::scenarios::object_url;

/// Named counters that clients increment.
pub const COUNTERS: usize = 300;
/// The counter that [`HOT_CLIENTS`] clients increment at once.
pub const HOT_COUNTER: &str = "kc-hot";
pub const HOT_CLIENTS: usize = 16;
/// Counters whose alarm is set, a few hundred ms ahead.
pub const ALARM_OBJECTS: usize = 30;
/// Chat rooms, one WebSocket client each.
pub const ROOMS: usize = 2;
/// Concurrent increment clients.
const INCREMENT_CLIENTS: usize = 6;
/// Most messages a chat client sends (the history check reads at most 1000).
const MAX_MESSAGES: usize = 900;
const POLL: Duration = Duration::from_millis(200);

/// A small deterministic generator (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n.max(1)
    }
}

/// What the clients did to one counter.
#[derive(Debug, Default)]
struct CounterLog {
    attempted: u64,
    answered: Vec<u64>,
}

/// What the clients did to one alarm object.
#[derive(Debug, Default)]
struct AlarmLog {
    attempted: u64,
    acknowledged: u64,
}

/// What a chat client did in one room.
#[derive(Debug, Default)]
struct RoomLog {
    sent: HashSet<String>,
    /// `seq` → text, of every message received (broadcasts and the history sent on joining).
    received: BTreeMap<u64, String>,
    /// Received messages that contradicted an earlier one with the same `seq`.
    conflicts: Vec<String>,
    connects: usize,
}

/// What a run did, for the report.
#[derive(Debug)]
pub struct KillCycleSummary {
    pub rounds: Vec<String>,
    pub increments_attempted: u64,
    pub increments_answered: u64,
    pub alarm_sets: u64,
    pub alarm_fires: u64,
    pub messages_sent: usize,
    pub messages_stored: usize,
    pub reconnects: usize,
    pub pids_seen: Vec<u32>,
}

struct Load {
    stop: AtomicBool,
    counters: Mutex<HashMap<String, CounterLog>>,
    alarms: Mutex<HashMap<String, AlarmLog>>,
    rooms: Mutex<HashMap<String, RoomLog>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn counter_name(i: usize) -> String {
    format!("kc-{i}")
}

fn alarm_name(i: usize) -> String {
    format!("ka-{i}")
}

fn room_name(i: usize) -> String {
    format!("room-{i}")
}

/// Increments random counters, or (`hot`) always the one hot counter.
async fn increment_client(load: Arc<Load>, entries: Arc<Vec<String>>, seed: u64, hot: bool) {
    let client = Client::new();
    let mut rng = Rng::new(seed);
    while !load.stop.load(Ordering::SeqCst) {
        let name = if hot {
            HOT_COUNTER.to_owned()
        } else {
            counter_name(rng.below(COUNTERS))
        };
        let entry = &entries[rng.below(entries.len())];
        lock(&load.counters)
            .entry(name.clone())
            .or_default()
            .attempted += 1;
        let reply = client
            .post(&object_url(entry, &name, "increment"), "")
            .await;
        match reply {
            Ok(r) if r.status == 200 => {
                let value = r
                    .number()
                    .unwrap_or_else(|| panic!("{name}: body {}", r.body));
                lock(&load.counters)
                    .entry(name)
                    .or_default()
                    .answered
                    .push(value);
            }
            // Refused or unanswered: it may or may not have applied. Do not spin while a
            // process is down.
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn set_alarm(client: &Client, load: &Load, entry: &str, name: &str, in_ms: usize) -> bool {
    lock(&load.alarms)
        .entry(name.to_owned())
        .or_default()
        .attempted += 1;
    let url = object_url(entry, name, &format!("alarm?in_ms={in_ms}"));
    let acked = matches!(client.post(&url, "").await, Ok(r) if r.status == 200);
    if acked {
        lock(&load.alarms)
            .entry(name.to_owned())
            .or_default()
            .acknowledged += 1;
    }
    acked
}

async fn alarm_client(load: Arc<Load>, entries: Arc<Vec<String>>, seed: u64) {
    let client = Client::new();
    let mut rng = Rng::new(seed);
    while !load.stop.load(Ordering::SeqCst) {
        let name = alarm_name(rng.below(ALARM_OBJECTS));
        let entry = &entries[rng.below(entries.len())];
        set_alarm(&client, &load, entry, &name, 200 + rng.below(400)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Joins `room` through random entries, sends a message every 100 ms and records what comes
/// back; reconnects whenever the socket breaks (its sidecar was killed).
async fn chat_client(load: Arc<Load>, entries: Arc<Vec<String>>, room: String, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut k = 0usize;
    while !load.stop.load(Ordering::SeqCst) {
        let entry = &entries[rng.below(entries.len())];
        let url = format!(
            "{}/objects/ChatRoom/name/{room}/ws?name=kc",
            entry.replacen("http://", "ws://", 1)
        );
        let connected = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(&url),
        )
        .await;
        let Ok(Ok((socket, _))) = connected else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        lock(&load.rooms).entry(room.clone()).or_default().connects += 1;
        let (mut write, mut read) = socket.split();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            if load.stop.load(Ordering::SeqCst) {
                let _ = write.send(Message::Close(None)).await;
                return;
            }
            tokio::select! {
                msg = read.next() => match msg {
                    Some(Ok(Message::Text(text))) => record_message(&load, &room, text.as_str()),
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                },
                _ = tick.tick() => {
                    if k >= MAX_MESSAGES {
                        continue;
                    }
                    let text = format!("m-{room}-{k}");
                    k += 1;
                    lock(&load.rooms).entry(room.clone()).or_default().sent.insert(text.clone());
                    if write.send(Message::text(text)).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
}

fn record_message(load: &Load, room: &str, text: &str) {
    let Ok(json) = serde_json::from_str::<serde_json::Value>(text) else {
        return;
    };
    let (Some(seq), Some(body)) = (json["seq"].as_u64(), json["text"].as_str()) else {
        return;
    };
    let mut rooms = lock(&load.rooms);
    let log = rooms.entry(room.to_owned()).or_default();
    match log.received.get(&seq) {
        Some(before) if before != body => log
            .conflicts
            .push(format!("seq {seq}: {before:?} then {body:?}")),
        Some(_) => {}
        None => {
            log.received.insert(seq, body.to_owned());
        }
    }
}

/// Polls `f` every 200 ms until it gives `Ok`, for up to `attempts` times.
async fn poll<T, F, Fut>(what: &str, attempts: u32, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut last = String::new();
    for _ in 0..attempts {
        match f().await {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        tokio::time::sleep(POLL).await;
    }
    panic!("{what}: still failing after {attempts} attempts; last: {last}");
}

/// Runs `rounds` kill cycles over the processes of `counters` (running the counter example) and
/// `chat` (running the chat example), then checks the history (panics with an explanation).
pub async fn kill_cycles(
    counters: &LocalCluster,
    chat: &LocalCluster,
    rounds: usize,
    seed: u64,
) -> KillCycleSummary {
    let load = Arc::new(Load {
        stop: AtomicBool::new(false),
        counters: Mutex::new(HashMap::new()),
        alarms: Mutex::new(HashMap::new()),
        rooms: Mutex::new(HashMap::new()),
    });
    let counter_entries = Arc::new(counters.entries());
    let chat_entries = Arc::new(chat.entries());
    let client = Client::new();

    // Every alarm object gets one acknowledged alarm before the first kill.
    for i in 0..ALARM_OBJECTS {
        let name = alarm_name(i);
        let entry = counter_entries[i % counter_entries.len()].clone();
        let load2 = load.clone();
        let client2 = client.clone();
        poll(&format!("first alarm of {name}"), 150, || {
            let (load, client, entry, name) =
                (load2.clone(), client2.clone(), entry.clone(), name.clone());
            async move {
                if set_alarm(&client, &load, &entry, &name, 300).await {
                    Ok(())
                } else {
                    Err("not acknowledged".into())
                }
            }
        })
        .await;
    }

    let mut tasks = JoinSet::new();
    for c in 0..INCREMENT_CLIENTS + HOT_CLIENTS {
        tasks.spawn(increment_client(
            load.clone(),
            counter_entries.clone(),
            seed ^ (c as u64 + 1),
            c >= INCREMENT_CLIENTS,
        ));
    }
    tasks.spawn(alarm_client(
        load.clone(),
        counter_entries.clone(),
        seed ^ 0xA1A2,
    ));
    for r in 0..ROOMS {
        tasks.spawn(chat_client(
            load.clone(),
            chat_entries.clone(),
            room_name(r),
            seed ^ (0xC0 + r as u64),
        ));
    }

    let clusters = [("counter", counters), ("chat", chat)];
    let shards = counters.shard_count();
    let mut rng = Rng::new(seed);
    let mut log = vec![];
    let mut pids_seen: HashSet<u32> = counters.pids().into_iter().chain(chat.pids()).collect();
    for round in 0..rounds {
        tokio::time::sleep(Duration::from_millis(300 + rng.below(400) as u64)).await;
        let (name, cluster) = clusters[rng.below(clusters.len())];
        let shard = rng.below(shards);
        let which = if rng.below(2) == 0 {
            Process::Sidecar
        } else {
            Process::App
        };
        let down = Duration::from_millis(100 + rng.below(500) as u64);
        cluster
            .kill_process(shard, which)
            .unwrap_or_else(|e| panic!("round {round}: kill: {e:#}"));
        tokio::time::sleep(down).await;
        cluster
            .revive(shard)
            .await
            .unwrap_or_else(|e| panic!("round {round}: restart: {e:#}"));
        pids_seen.extend(cluster.pids());
        let line = format!(
            "round {round}: kill -9 the {which:?} of {name} shard {shard}, down {} ms",
            down.as_millis()
        );
        println!("{line}");
        log.push(line);
    }
    // Some load on the healed clusters, then stop the clients.
    tokio::time::sleep(Duration::from_secs(1)).await;
    load.stop.store(true, Ordering::SeqCst);
    while let Some(done) = tasks.join_next().await {
        done.expect("a load client panicked");
    }

    let (increments_attempted, increments_answered) =
        check_counters(&load, &client, &counter_entries).await;
    let (alarm_sets, alarm_fires) = check_alarms(&load, &client, &counter_entries).await;
    let (messages_sent, messages_stored, reconnects) =
        check_rooms(&load, &client, &chat_entries).await;
    let mut pids_seen: Vec<u32> = pids_seen.into_iter().collect();
    pids_seen.sort_unstable();
    KillCycleSummary {
        rounds: log,
        increments_attempted,
        increments_answered,
        alarm_sets,
        alarm_fires,
        messages_sent,
        messages_stored,
        reconnects,
        pids_seen,
    }
}

async fn read_number(client: &Client, entries: &[String], name: &str) -> u64 {
    poll(&format!("value of {name}"), 150, || async {
        match client.get(&object_url(&entries[0], name, "value")).await {
            Ok(r) if r.status == 200 => r.number().ok_or(r.body),
            Ok(r) => Err(format!("{} {}", r.status, r.body)),
            Err(e) => Err(e),
        }
    })
    .await
}

/// Returns (attempted, answered) increments.
async fn check_counters(load: &Load, client: &Client, entries: &[String]) -> (u64, u64) {
    let logs: Vec<(String, CounterLog)> = lock(&load.counters).drain().collect();
    let (mut attempted, mut answered) = (0, 0);
    for (name, log) in logs {
        let mut values = log.answered.clone();
        values.sort_unstable();
        let distinct = values.windows(2).all(|w| w[0] != w[1]);
        assert!(distinct, "{name}: a value was answered twice: {values:?}");
        let value = read_number(client, entries, &name).await;
        let acked = values.len() as u64;
        assert!(
            values.last().is_none_or(|&max| max <= value),
            "{name}: final value {value} below an acknowledged answer {values:?}"
        );
        assert!(
            acked <= value && value <= log.attempted,
            "{name}: final value {value}, {acked} answered, {} attempted",
            log.attempted
        );
        if acked == log.attempted {
            assert_eq!(
                values,
                (1..=value).collect::<Vec<_>>(),
                "{name}: not serial"
            );
        }
        attempted += log.attempted;
        answered += acked;
    }
    (attempted, answered)
}

/// Waits until every alarm has fired; returns (sets attempted, fires).
async fn check_alarms(load: &Load, client: &Client, entries: &[String]) -> (u64, u64) {
    let logs: Vec<(String, AlarmLog)> = lock(&load.alarms).drain().collect();
    let (mut sets, mut fires) = (0, 0);
    for (name, log) in logs {
        // A failed attempt retries 2 s later, doubling: allow a minute and a half.
        let url = object_url(&entries[0], &name, "alarm");
        poll(&format!("the alarm of {name} fires"), 450, || async {
            match client.get(&url).await {
                Ok(r) if r.status == 200 && r.json().is_some_and(|j| j["time_ms"].is_null()) => {
                    Ok(())
                }
                Ok(r) => Err(format!("{} {}", r.status, r.body)),
                Err(e) => Err(e),
            }
        })
        .await;
        let fired = read_number(client, entries, &name).await;
        assert!(
            log.acknowledged >= 1,
            "{name}: no alarm set was acknowledged"
        );
        assert!(fired >= 1, "{name}: its alarm never fired");
        assert!(
            fired <= log.attempted,
            "{name}: fired {fired} times for {} sets: a flood",
            log.attempted
        );
        sets += log.attempted;
        fires += fired;
    }
    (sets, fires)
}

/// Returns (messages sent, messages stored, connects).
async fn check_rooms(load: &Load, client: &Client, entries: &[String]) -> (usize, usize, usize) {
    let logs: Vec<(String, RoomLog)> = lock(&load.rooms).drain().collect();
    assert_eq!(logs.len(), ROOMS, "a chat client never connected");
    let (mut sent, mut stored, mut connects) = (0, 0, 0);
    for (room, log) in logs {
        assert!(log.conflicts.is_empty(), "{room}: {:?}", log.conflicts);
        let url = format!(
            "{}/objects/ChatRoom/name/{room}/messages?limit=1000",
            entries[0]
        );
        let history: Vec<serde_json::Value> = poll(&format!("history of {room}"), 150, || async {
            match client.get(&url).await {
                Ok(r) if r.status == 200 => {
                    serde_json::from_str(&r.body).map_err(|e| e.to_string())
                }
                Ok(r) => Err(format!("{} {}", r.status, r.body)),
                Err(e) => Err(e),
            }
        })
        .await;
        let mut texts = HashSet::new();
        for (i, m) in history.iter().enumerate() {
            let seq = m["seq"].as_u64();
            assert_eq!(seq, Some(i as u64 + 1), "{room}: history not serial at {m}");
            let text = m["text"].as_str().unwrap_or_default().to_owned();
            assert!(log.sent.contains(&text), "{room}: {text:?} was never sent");
            assert!(texts.insert(text.clone()), "{room}: {text:?} stored twice");
        }
        assert!(history.len() <= log.sent.len());
        for (seq, text) in &log.received {
            let stored = history.get((*seq as usize).wrapping_sub(1));
            assert!(
                stored.is_some_and(|m| m["text"].as_str() == Some(text)),
                "{room}: received seq {seq} {text:?}, history has {stored:?}"
            );
        }
        assert!(!log.received.is_empty(), "{room}: nothing was received");
        sent += log.sent.len();
        stored += history.len();
        connects += log.connects;
    }
    (sent, stored, connects)
}

/// Processes that are alive (present in `/proc` and not zombies) among `pids`.
pub fn alive(pids: &[u32]) -> Vec<u32> {
    pids.iter()
        .copied()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_owned))
                })
                .is_some_and(|state| state != "Z")
        })
        .collect()
}

/// Live (not zombie) children of this process, from `/proc/*/stat`.
pub fn children_of_this_process() -> Vec<u32> {
    let me = std::process::id();
    let mut out = vec![];
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("?");
        let ppid = fields.next().and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(me) && state != "Z" {
            out.push(pid);
        }
    }
    out
}
