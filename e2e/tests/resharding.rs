//! Live resharding on a local cluster of real processes: five shards run from the start, the
//! ring first spans three of them, and shard 0 coordinates every change. Build every binary
//! first (`cargo build --workspace --bins`).

use std::sync::Arc;
use std::time::Duration;

use stead_e2e::reshard::{Load, check_exact, owned_slots, reshard, seed};
use stead_e2e::{Cluster, LocalCluster};

/// One cluster at a time: each has ten processes.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn cluster(extra: &[&str]) -> LocalCluster {
    let mut args = vec!["--ring-shards", "3", "--idle-timeout", "3s"];
    args.extend_from_slice(extra);
    LocalCluster::start_with_sidecar_args(5, &args)
        .await
        .unwrap_or_else(|e| panic!("start a 5-process cluster: {e:#}"))
}

fn names(n: usize) -> Arc<Vec<String>> {
    Arc::new((0..n).map(|i| format!("r-{i}")).collect())
}

/// Slots each shard owns, in ordinal order.
async fn owned_counts(c: &LocalCluster) -> Vec<usize> {
    let mut out = vec![];
    for i in 0..c.shard_count() {
        let v = owned_slots(c, i).await.expect("slots view");
        out.push(v["owned"].as_array().map_or(0, |a| a.len()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_five_two_three_under_load_keeps_every_counter_exact() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let c = cluster(&[]).await;
    let objects = std::env::var("STEAD_E2E_RESHARD_OBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let names = names(objects);
    let seeded = seed(&c, &names).await.expect("seed");
    let load = Load::start(c.entries(), names.clone(), 12, Duration::ZERO);
    for shards in [5u32, 2, 3] {
        let p = reshard(&c, shards, Duration::from_secs(300))
            .await
            .expect("reshard");
        let counts = owned_counts(&c).await;
        assert_eq!(
            counts.iter().sum::<usize>(),
            4096,
            "every slot has one owner: {counts:?}"
        );
        for (i, n) in counts.iter().enumerate() {
            assert_eq!(
                *n > 0,
                i < shards as usize,
                "after resharding to {shards}: {counts:?} ({p})"
            );
        }
    }
    let mut rec = load.stop().await;
    for (k, mut v) in seeded.values {
        rec.values.entry(k).or_default().append(&mut v);
    }
    eprintln!(
        "answered {} increments, {} 503s with Retry-After",
        rec.ok, rec.unavailable
    );
    check_exact(&c, &rec)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}
