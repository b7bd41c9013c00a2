//! Kill cycles on two three-shard [`LocalCluster`]s (the counter example, and the chat example
//! for WebSockets): 20 rounds of `kill -9` of a random sidecar or app under mixed load, each
//! process restarted after a short downtime, then a check of the whole history (see
//! [`stead_e2e::kill_cycles`]), and no process left behind. Build every binary first
//! (`cargo build --workspace --bins`).

use std::time::{SystemTime, UNIX_EPOCH};

use stead_e2e::LocalCluster;
use stead_e2e::kill_cycles::{alive, children_of_this_process, kill_cycles};

const SHARDS: usize = 3;
const ROUNDS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_kill_9_rounds_under_mixed_load_keep_every_history() {
    // A fresh seed each run, printed so that a failing run can be replayed with
    // STEAD_KILL_SEED.
    let seed = std::env::var("STEAD_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("kill cycles: seed {seed} (replay with STEAD_KILL_SEED={seed})");
    let counters = LocalCluster::start(SHARDS)
        .await
        .unwrap_or_else(|e| panic!("start the counter cluster: {e:#}"));
    let chat = LocalCluster::start_app(SHARDS, "chat", "ChatRoom")
        .await
        .unwrap_or_else(|e| panic!("start the chat cluster: {e:#}"));

    let summary = kill_cycles(&counters, &chat, ROUNDS, seed).await;
    assert_eq!(summary.rounds.len(), ROUNDS);
    assert!(summary.increments_answered > 0);
    println!(
        "kill cycles: {} increments attempted, {} answered; {} alarm sets, {} fires; {} chat messages sent, {} stored, {} WebSocket connects",
        summary.increments_attempted,
        summary.increments_answered,
        summary.alarm_sets,
        summary.alarm_fires,
        summary.messages_sent,
        summary.messages_stored,
        summary.reconnects
    );

    drop(counters);
    drop(chat);
    assert_eq!(
        alive(&summary.pids_seen),
        Vec::<u32>::new(),
        "processes left running"
    );
    assert_eq!(
        children_of_this_process(),
        Vec::<u32>::new(),
        "children left running"
    );
}
