//! What the workspace's process-level tests share. Only tests depend on this crate.

pub mod ports;
