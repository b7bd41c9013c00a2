//! A network partition: a three-shard [`LocalCluster`] with each shard in its own network
//! namespace (veth pairs to a bridge in the root namespace), clients in the root namespace.
//! One shard's link is cut and restored. Needs root and `ip netns`; elsewhere it says why it
//! is skipped.

use stead_e2e::{LocalCluster, netns, scenarios};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_off_shard_is_never_replaced_and_comes_back() {
    if let Some(why) = netns::unavailable() {
        println!("skipped: {why}");
        return;
    }
    let cluster = LocalCluster::start_in_netns(3)
        .await
        .unwrap_or_else(|e| panic!("start a cluster in network namespaces: {e:#}"));
    scenarios::partition_keeps_one_owner(&cluster, 2).await;
}
