//! Live resharding through faults, on a local cluster of real processes: five shards run from
//! the start, the ring spans three of them and grows to five, and a process is killed -9 in the
//! middle of a slot hand-off; alarms and WebSockets of moving objects. Build the binaries first
//! (`cargo build -p stead-sidecar -p counter -p chat --bins`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use stead_core::{ClassName, ObjectId, ObjectName, Ring};
use stead_e2e::client::Client;
use stead_e2e::cluster::{CLASS, object_id};
use stead_e2e::reshard::{
    Load, Victim, check_exact, kill_mid_handoff, leftover_staging, names_avoiding, owned_slots,
    reshard, seed,
};
use stead_e2e::{Cluster, LocalCluster};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// One cluster at a time: each has ten processes.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The ring before and after.
const FROM: u32 = 3;
const TO: u32 = 5;

fn ring_args(extra: &[&'static str]) -> Vec<&'static str> {
    let mut args = vec!["--ring-shards", "3", "--idle-timeout", "3s"];
    args.extend_from_slice(extra);
    args
}

async fn counter_cluster(extra: &[&'static str]) -> LocalCluster {
    LocalCluster::start_with_sidecar_args(TO as usize, &ring_args(extra))
        .await
        .unwrap_or_else(|e| panic!("start a 5-process cluster: {e:#}"))
}

/// Every slot has exactly one owner, every shard of the new ring owns some, and nothing is
/// mid-move.
async fn check_ownership(c: &LocalCluster) {
    let mut counts = vec![];
    for i in 0..c.shard_count() {
        let v = owned_slots(c, i).await.expect("slots view");
        assert_eq!(
            v["moving"].as_array().map_or(0, Vec::len),
            0,
            "shard {i} still moves slots after the resharding: {v}"
        );
        counts.push(v["owned"].as_array().map_or(0, Vec::len));
    }
    assert_eq!(
        counts.iter().sum::<usize>(),
        4096,
        "every slot has one owner: {counts:?}"
    );
    assert!(
        counts.iter().all(|n| *n > 0),
        "every shard of the new ring owns slots: {counts:?}"
    );
}

/// Grows 3 → 5 under a counter load while `victim` is killed -9 and restarted mid hand-off;
/// then checks every counter exactly, the ownership, and that no staged copy is left behind.
async fn grow_through(victim: Victim) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let t0 = std::time::Instant::now();
    let c = counter_cluster(&[
        "--test-handoff-step-delay",
        "200ms",
        "--reshard-parallelism",
        "64",
    ])
    .await;
    let slots = c.slots();
    // Objects anywhere (some on the victim): written once, then only read at the end.
    let resting: Vec<String> = (0..120).map(|i| format!("rest-{i}")).collect();
    // Objects the victim never owns: under load the whole time, through the other entries,
    // so no request of theirs is ever in flight inside the killed process.
    let busy = names_avoiding("busy", 100, slots, &[FROM, TO], victim.shard());
    let mut seeded = seed(&c, &resting).await.expect("seed");
    let seeded_busy = seed(&c, &busy).await.expect("seed");
    seeded.values.extend(seeded_busy.values);
    let entries: Vec<String> = c
        .entries()
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != victim.shard())
        .map(|(_, e)| e)
        .collect();
    eprintln!("{:?}: cluster started and seeded", t0.elapsed());
    let load = Load::start(entries, Arc::new(busy), 6, Duration::ZERO);
    let (done, killed) = tokio::join!(
        reshard(&c, TO, Duration::from_secs(150)),
        kill_mid_handoff(&c, victim, Duration::from_secs(60)),
    );
    let mut all = load.stop().await;
    let killed = killed.unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("{killed}");
    let p = done.unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("{:?}: resharding done: {p}", t0.elapsed());
    for (k, mut v) in seeded.values {
        all.values.entry(k).or_default().append(&mut v);
    }
    eprintln!(
        "answered {} increments, {} 503s with Retry-After",
        all.ok, all.unavailable
    );
    assert!(all.ok > 0, "the load got no answer at all");
    check_exact(&c, &all)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("{:?}: counters checked", t0.elapsed());
    check_ownership(&c).await;
    let left = leftover_staging(c.root(), c.shard_count());
    assert!(left.is_empty(), "staged copies left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn source_killed_mid_copy_restarts_and_the_resharding_completes_exactly() {
    grow_through(Victim::SourceCopying(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn target_killed_mid_install_restarts_and_the_resharding_completes_exactly() {
    grow_through(Victim::TargetInstalling(3, FROM as usize)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coordinator_killed_between_steps_resumes_when_asked_again() {
    grow_through(Victim::CoordinatorAfter(40)).await;
}

/// A request to `url` retried while it answers 503 (a slot switching owners), bounded.
async fn retrying(client: &Client, method: &str, url: &str) -> stead_e2e::client::Reply {
    for _ in 0..300 {
        match client.send(method, url, &[], "").await {
            Ok(r) if r.is_unavailable() => {}
            Ok(r) => return r,
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{method} {url}: still unavailable after 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_alarm_set_just_before_its_slot_moves_fires_once_on_the_new_owner() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // Long fences (the step delay runs inside them), so that many alarms fall due while their
    // slot is fenced and arrive overdue on the new owner.
    let c = counter_cluster(&[
        "--test-handoff-step-delay",
        "300ms",
        "--reshard-parallelism",
        "48",
    ])
    .await;
    let slots = c.slots();
    let (before, after) = (Ring::new(1, slots, FROM), Ring::new(2, slots, TO));
    let movers: Vec<String> = (0..)
        .map(|k| format!("alarm-{k}"))
        .filter(|n| {
            let slot = object_id(n).slot(slots);
            before.owner(slot) != after.owner(slot)
        })
        .take(300)
        .collect();
    seed(&c, &movers).await.expect("seed");
    let client = Client::new();
    let entries = c.entries();
    // Due from 0.5 s to about 20 s from now: some fire before their slot moves, some while
    // it is fenced, some after.
    for (i, n) in movers.iter().enumerate() {
        let url = format!(
            "{}/objects/{CLASS}/name/{n}/alarm?in_ms={}",
            entries[i % entries.len()],
            500 + i * 65
        );
        let r = retrying(&client, "POST", &url).await;
        assert_eq!(r.status, 200, "{n}: set the alarm: {}", r.body);
    }
    let p = reshard(&c, TO, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("resharding done: {p}");
    let value = |n: &str| {
        let url = format!("{}/objects/{CLASS}/name/{n}/value", entries[0]);
        let client = client.clone();
        async move { retrying(&client, "GET", &url).await.number() }
    };
    // Every alarm fires: the value goes from 1 to 2 (bounded: a refused delivery retries).
    for n in &movers {
        let mut v = None;
        for _ in 0..600 {
            v = value(n).await;
            if v != Some(1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(v, Some(2), "{n}: value after its alarm");
    }
    // ... and only once: nothing is pending, and the value stays.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for n in &movers {
        assert_eq!(
            value(n).await,
            Some(2),
            "{n}: its alarm fired more than once"
        );
        let url = format!("{}/objects/{CLASS}/name/{n}/alarm", entries[0]);
        let r = retrying(&client, "GET", &url).await;
        assert_eq!(
            r.json().map(|j| j["time_ms"].clone()),
            Some(serde_json::Value::Null),
            "{n}: an alarm is still pending: {}",
            r.body
        );
    }
    // Each database lives on its new owner only.
    let files = c.database_files().expect("database files");
    for n in &movers {
        let id = object_id(n);
        assert_eq!(
            shards_holding(&files, &id),
            vec![after.owner(id.slot(slots)) as usize],
            "{n}: database not only on its new owner"
        );
    }
    check_ownership(&c).await;
}

/// What one chat client saw: each message once, by sequence number.
#[derive(Default)]
struct Seen {
    /// (seq, text) in the order first received.
    messages: Vec<(u64, String)>,
    problems: Vec<String>,
}

impl Seen {
    fn take(&mut self, raw: &str) -> Option<String> {
        let json: serde_json::Value = serde_json::from_str(raw).ok()?;
        let (seq, text) = (json["seq"].as_u64()?, json["text"].as_str()?.to_owned());
        match self.messages.get((seq as usize).wrapping_sub(1)) {
            Some((_, before)) if *before != text => self
                .problems
                .push(format!("seq {seq}: {before:?} then {text:?}")),
            Some(_) => {} // history after a reconnect
            None if seq as usize == self.messages.len() + 1 => {
                self.messages.push((seq, text.clone()))
            }
            None => self.problems.push(format!(
                "seq {seq} arrived after {} (a gap or out of order)",
                self.messages.len()
            )),
        }
        Some(text)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chat_socket_of_a_moving_room_closes_1012_and_reconnects_to_an_intact_history() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let c = LocalCluster::start_app_with_sidecar_args(
        TO as usize,
        "chat",
        "ChatRoom",
        &ring_args(&["--reshard-parallelism", "16"]),
    )
    .await
    .unwrap_or_else(|e| panic!("start a 5-process chat cluster: {e:#}"));
    let slots = c.slots();
    let (before, after) = (Ring::new(1, slots, FROM), Ring::new(2, slots, TO));
    let class = ClassName::new("ChatRoom").expect("class");
    let (room, id) = (0..)
        .map(|k| {
            let room = format!("room-{k}");
            let id = ObjectId::named(&class, &ObjectName::new(&room).expect("name"));
            (room, id)
        })
        .find(|(_, id)| before.owner(id.slot(slots)) != after.owner(id.slot(slots)))
        .expect("a room that moves");
    let entries = c.entries();
    let client = Client::new();
    let history_url = |limit: u32| {
        format!(
            "{}/objects/ChatRoom/name/{room}/messages?limit={limit}",
            entries[0]
        )
    };
    let resharded = AtomicBool::new(false);
    let chat = async {
        let mut seen = Seen::default();
        let (mut next, mut connects, mut closed_1012, mut after_done) = (0usize, 0usize, 0, 0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(150);
        'connect: while tokio::time::Instant::now() < deadline {
            // A message in flight when the socket closed may be stored: ask the room.
            if next > 0 || connects > 0 {
                let r = retrying(&client, "GET", &history_url(5)).await;
                let stored: Vec<serde_json::Value> =
                    serde_json::from_str(&r.body).expect("history");
                if stored
                    .iter()
                    .any(|m| m["text"] == format!("m-{next}").as_str())
                {
                    next += 1;
                }
            }
            let entry = &entries[connects % entries.len()];
            let url = format!(
                "{}/objects/ChatRoom/name/{room}/ws?name=alice",
                entry.replacen("http://", "ws://", 1)
            );
            let Ok(Ok((socket, _))) = tokio::time::timeout(
                Duration::from_secs(5),
                tokio_tungstenite::connect_async(&url),
            )
            .await
            else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            connects += 1;
            let (mut write, mut read) = socket.split();
            loop {
                if resharded.load(Ordering::SeqCst) {
                    after_done += 1;
                    if closed_1012 > 0 && after_done > 20 {
                        let _ = write.send(Message::Close(None)).await;
                        break 'connect;
                    }
                    assert!(
                        after_done < 200,
                        "the room moved, but its socket was never closed with 1012"
                    );
                }
                let text = format!("m-{next}");
                if write.send(Message::text(text.clone())).await.is_err() {
                    continue 'connect;
                }
                // Wait for our own message to come back (history may come first).
                loop {
                    let msg = tokio::time::timeout(Duration::from_secs(10), read.next()).await;
                    match msg {
                        Ok(Some(Ok(Message::Text(raw)))) => {
                            if seen.take(raw.as_str()).as_deref() == Some(text.as_str()) {
                                next += 1;
                                break;
                            }
                        }
                        Ok(Some(Ok(Message::Close(frame)))) => {
                            let code = frame.map(|f| f.code);
                            assert_eq!(
                                code,
                                Some(CloseCode::Restart),
                                "close code of a moving room"
                            );
                            closed_1012 += 1;
                            continue 'connect;
                        }
                        Ok(Some(Ok(_))) => {}
                        Ok(Some(Err(_)) | None) | Err(_) => continue 'connect,
                    }
                }
            }
        }
        (seen, next, connects, closed_1012)
    };
    let reshard = async {
        let p = reshard(&c, TO, Duration::from_secs(120)).await;
        resharded.store(true, Ordering::SeqCst);
        p
    };
    let ((seen, sent, connects, closed_1012), p) = tokio::join!(chat, reshard);
    let p = p.unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!(
        "resharding done: {p}; {sent} messages, {connects} connections, {closed_1012} closed with 1012"
    );
    assert!(seen.problems.is_empty(), "{:?}", seen.problems);
    assert!(
        closed_1012 > 0,
        "the room's socket was never closed with 1012"
    );
    let r = retrying(&client, "GET", &history_url(1000)).await;
    let history: Vec<serde_json::Value> = serde_json::from_str(&r.body).expect("history");
    let stored: Vec<(u64, String)> = history
        .iter()
        .map(|m| {
            (
                m["seq"].as_u64().unwrap_or(0),
                m["text"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let expected: Vec<(u64, String)> = (0..sent)
        .map(|k| (k as u64 + 1, format!("m-{k}")))
        .collect();
    assert_eq!(
        stored, expected,
        "the room's history is every message once, in order"
    );
    assert_eq!(
        seen.messages, expected,
        "the client saw every message once, in order"
    );
    // The room's database is on its new owner only.
    assert_eq!(
        shards_holding(&c.database_files().expect("database files"), &id),
        vec![after.owner(id.slot(slots)) as usize],
        "{room}: database not only on its new owner"
    );
}

/// The shards whose volume holds object `id`'s database.
fn shards_holding(files: &[stead_e2e::DbFile], id: &ObjectId) -> Vec<usize> {
    let hex = id.to_hex();
    files
        .iter()
        .filter(|f| f.object_id().as_deref() == Some(hex.as_str()))
        .map(|f| f.shard)
        .collect()
}
