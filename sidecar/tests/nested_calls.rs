//! Nested object calls against the concurrent-turn bound: a turn waiting on its callee gives its
//! permit back, so many deep call chains neither starve themselves (504 at the turn timeout)
//! nor unrelated objects. Real processes: the counter example's `chain` route calls the next
//! counter through the app API.

mod support;

use std::sync::Arc;

use support::Shard;

const PERMITS: usize = 4;
const CHAINS: usize = 12;
const DEPTH: usize = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deep_call_chains_do_not_starve_the_shard() {
    // Few permits and a short turn timeout: before the fix, the first PERMITS roots held every
    // permit while waiting on callees that could never start, and every chain answered 504.
    let shard = Arc::new(
        Shard::start(&[
            "--max-concurrent-turns",
            &PERMITS.to_string(),
            "--turn-timeout",
            "5s",
        ])
        .await,
    );
    let mut chains = vec![];
    for c in 0..CHAINS {
        let shard = shard.clone();
        chains.push(tokio::spawn(async move {
            let rest = (1..DEPTH)
                .map(|d| format!("c{c}-{d}"))
                .collect::<Vec<_>>()
                .join(",");
            shard
                .send(
                    "POST",
                    &format!("/objects/Counter/name/c{c}-0/chain?next={rest}"),
                    "",
                )
                .await
        }));
    }
    // An unrelated object answers while the chains run.
    let (status, body) = shard
        .send("GET", "/objects/Counter/name/unrelated/value", "")
        .await;
    assert_eq!((status, body.trim()), (200, "0"));

    for (c, chain) in chains.into_iter().enumerate() {
        let (status, body) = chain.await.unwrap();
        assert_eq!(status, 200, "chain {c}: {body}");
        assert_eq!(body.trim(), "1", "chain {c}: the leaf's first increment");
    }
    for c in 0..CHAINS {
        let leaf = format!("/objects/Counter/name/c{c}-{}/value", DEPTH - 1);
        let (_, v) = shard.send("GET", &leaf, "").await;
        assert_eq!(v.trim(), "1", "chain {c}'s leaf incremented exactly once");
    }
    assert_eq!(shard.metric("stead_turns_timed_out_total").await, 0.0);
}
