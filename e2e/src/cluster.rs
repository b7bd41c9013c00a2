//! The one abstraction every scenario runs against: a Stead cluster of N shards, whatever runs
//! it (local processes here; a kind cluster later).

use std::path::PathBuf;

use async_trait::async_trait;
use stead_core::{ClassName, ObjectId, ObjectName, Ring};

/// An object database file found on a shard's volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbFile {
    pub shard: usize,
    pub path: PathBuf,
}

impl DbFile {
    /// The object id the file belongs to (`{id}.sqlite`).
    pub fn object_id(&self) -> Option<String> {
        (self.path.extension()? == "sqlite")
            .then(|| self.path.file_stem()?.to_str().map(str::to_owned))?
    }
}

#[async_trait]
pub trait Cluster: Send + Sync {
    /// Base URLs (`http://host:port`) of every shard's ingress, in ordinal order.
    fn entries(&self) -> Vec<String>;

    fn shard_count(&self) -> usize {
        self.entries().len()
    }

    /// Slots of the namespace.
    fn slots(&self) -> u32 {
        stead_core::id::DEFAULT_SLOTS
    }

    /// Base URL of shard `shard`'s peer port, as reachable from the test.
    fn peer_url(&self, shard: usize) -> String;

    /// The namespace's peer token, where the test may know it.
    fn peer_token(&self) -> Option<String> {
        None
    }

    /// `kill -9` every process of shard `shard`.
    async fn kill(&self, shard: usize) -> anyhow::Result<()>;

    /// Starts shard `shard` again (same data) and waits until it is ready.
    async fn restart(&self, shard: usize) -> anyhow::Result<()>;

    /// The Prometheus text of shard `shard`'s admin port.
    async fn metrics(&self, shard: usize) -> anyhow::Result<String>;

    /// Every object database file in the cluster, where the test can see the volumes.
    fn database_files(&self) -> Option<Vec<DbFile>> {
        None
    }

    /// Whether [`Cluster::isolate`] and [`Cluster::heal`] work on this cluster.
    fn can_partition(&self) -> bool {
        false
    }

    /// Cuts shard `shard` off the network (clients and other shards), leaving it running.
    async fn isolate(&self, shard: usize) -> anyhow::Result<()> {
        anyhow::bail!("this cluster cannot isolate shard {shard}")
    }

    /// Undoes [`Cluster::isolate`].
    async fn heal(&self, shard: usize) -> anyhow::Result<()> {
        anyhow::bail!("this cluster cannot heal shard {shard}")
    }
}

/// The class every scenario uses (the counter example's).
pub const CLASS: &str = "Counter";

/// The id of the named Counter object `name`.
pub fn object_id(name: &str) -> ObjectId {
    let class = ClassName::new(CLASS).expect("valid class");
    let name = ObjectName::new(name).expect("valid object name");
    ObjectId::named(&class, &name)
}

/// The shard that owns the named Counter object `name` in a static ring of `shards`.
pub fn owner(name: &str, slots: u32, shards: usize) -> usize {
    let ring = Ring::new(1, slots, shards as u32);
    ring.owner(object_id(name).slot(slots)) as usize
}

/// `per_shard` names `{prefix}-{k}` for each shard, grouped by the shard that owns them.
pub fn names_by_owner(
    prefix: &str,
    per_shard: usize,
    slots: u32,
    shards: usize,
) -> Vec<Vec<String>> {
    let mut out = vec![Vec::new(); shards];
    let mut k = 0u64;
    while out.iter().any(|v| v.len() < per_shard) {
        let name = format!("{prefix}-{k}");
        let o = owner(&name, slots, shards);
        if out[o].len() < per_shard {
            out[o].push(name);
        }
        k += 1;
    }
    out
}

/// The sum of every sample of `metric` whose labels contain `label` (e.g. `reason="not_owner"`,
/// or "" for all).
pub fn metric_sum(text: &str, metric: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let name_end = l.find(['{', ' ']).unwrap_or(l.len());
            &l[..name_end] == metric
        })
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_grouped_by_their_owner() {
        let groups = names_by_owner("t", 3, 4096, 3);
        for (shard, names) in groups.iter().enumerate() {
            assert_eq!(names.len(), 3);
            for n in names {
                assert_eq!(owner(n, 4096, 3), shard);
            }
        }
    }

    #[test]
    fn metric_sums_filter_by_name_and_label() {
        let text = "# HELP x\nstead_forwards_total{reason=\"not_owner\"} 3\nstead_forwards_total{reason=\"tombstone\"} 1\nstead_forwards_total_other 9\nstead_slots_owned 1365\n";
        assert_eq!(metric_sum(text, "stead_forwards_total", "not_owner"), 3.0);
        assert_eq!(metric_sum(text, "stead_forwards_total", ""), 4.0);
        assert_eq!(metric_sum(text, "stead_slots_owned", ""), 1365.0);
    }
}
