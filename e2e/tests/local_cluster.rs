//! The end-to-end scenarios on a three-shard [`LocalCluster`]: real `stead sidecar` and
//! `counter` processes on loopback with a static ring. Build every binary first
//! (`cargo build --workspace --bins`).

use stead_e2e::{LocalCluster, scenarios};

const SHARDS: usize = 3;

/// One cluster at a time: each has six processes, and a loaded machine would only slow every
/// test down (the scenarios poll; they never assert durations).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn cluster() -> LocalCluster {
    LocalCluster::start(SHARDS)
        .await
        .unwrap_or_else(|e| panic!("start a {SHARDS}-shard cluster: {e:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counters_are_exact_through_random_entry_shards() {
    let _turn = ONE_AT_A_TIME.lock().await;
    scenarios::counter_exactness(&cluster().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_named_object_is_one_object_through_every_entry() {
    let _turn = ONE_AT_A_TIME.lock().await;
    scenarios::one_object_through_every_entry(&cluster().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_shard_under_load_affects_only_its_objects() {
    let _turn = ONE_AT_A_TIME.lock().await;
    scenarios::kill_one_shard_under_load(&cluster().await, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_peer_port_refuses_requests_without_the_token() {
    let _turn = ONE_AT_A_TIME.lock().await;
    scenarios::peer_port_requires_the_token(&cluster().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn objects_on_different_shards_call_each_other_and_cycles_answer_508() {
    let _turn = ONE_AT_A_TIME.lock().await;
    scenarios::calls_across_shards(&cluster().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deep_call_chains_across_shards_do_not_starve_the_turn_bound() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // Two permits per shard and a 5 s turn timeout: before a waiting caller gave its permit
    // back, these chains filled every permit and ended in 504.
    let c = LocalCluster::start_with_sidecar_args(
        SHARDS,
        &["--max-concurrent-turns", "2", "--turn-timeout", "5s"],
    )
    .await
    .unwrap_or_else(|e| panic!("start a {SHARDS}-shard cluster: {e:#}"));
    scenarios::deep_chains_across_shards(&c, 8, 12).await;
}
