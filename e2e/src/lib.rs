//! End-to-end scenarios against a Stead cluster.
//!
//! [`scenarios`] are written only against the [`Cluster`] trait, so that every kind of cluster
//! runs the same ones: [`LocalCluster`] (real processes on this machine, on loopback or in
//! network namespaces) and [`kube::KubeCluster`] (a kind cluster, where Docker exists).

pub mod client;
pub mod cluster;
pub mod kill_cycles;
pub mod kube;
pub mod kube_scenarios;
pub mod local;
pub mod netns;
pub mod one_shard;
pub mod reshard;
pub mod scenarios;

pub use client::{Client, Reply};
pub use cluster::{Cluster, DbFile};
pub use local::{LocalCluster, Process};
