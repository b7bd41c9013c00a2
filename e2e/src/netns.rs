//! Network namespaces for partition tests: one namespace per shard, each joined to a bridge in
//! the root namespace by a veth pair. Everything is named after this process's id so that
//! concurrent runs do not clash, and removed on drop (also when a test fails).

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// Why namespaces cannot be used here, or `None` when they can.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "`ip netns list` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run `ip`: {e}")),
    }
}

/// Runs `ip args…`; an error carries its stderr.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run ip {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        anyhow::bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The namespaces of a cluster and the links between them.
pub struct Netns {
    tag: String,
    subnet: u8,
    bridge: Option<String>,
    /// Per shard: (namespace, host-side veth).
    shards: Vec<(String, String)>,
}

impl Netns {
    /// Creates the bridge `stb{pid}` (10.77.S.1/24, S from the pid) and, for each shard i,
    /// namespace `stead-e2e-{pid}-{i}` with address 10.77.S.(10+i) and loopback up.
    pub fn create(shards: usize) -> anyhow::Result<Self> {
        let pid = std::process::id();
        let mut net = Self {
            tag: pid.to_string(),
            // The third octet: 10.77.0.x unless another run (another pid) could clash.
            subnet: (pid % 250) as u8,
            bridge: None,
            shards: vec![],
        };
        let bridge = format!("stb{}", net.tag);
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        net.bridge = Some(bridge.clone());
        ip(&[
            "addr",
            "add",
            &format!("{}/24", net.gateway()),
            "dev",
            &bridge,
        ])?;
        ip(&["link", "set", &bridge, "up"])?;
        for i in 0..shards {
            net.add_shard(i, &bridge)?;
        }
        Ok(net)
    }

    fn add_shard(&mut self, i: usize, bridge: &str) -> anyhow::Result<()> {
        let ns = format!("stead-e2e-{}-{i}", self.tag);
        let host = format!("sth{}x{i}", self.tag);
        let inside = format!("stn{}x{i}", self.tag);
        ip(&["netns", "add", &ns])?;
        self.shards.push((ns.clone(), String::new()));
        ip(&[
            "link", "add", &host, "type", "veth", "peer", "name", &inside,
        ])?;
        self.shards[i].1 = host.clone();
        ip(&["link", "set", &inside, "netns", &ns])?;
        ip(&["link", "set", &host, "master", bridge])?;
        ip(&["link", "set", &host, "up"])?;
        let addr = format!("{}/24", self.addr(i));
        ip(&["-n", &ns, "addr", "add", &addr, "dev", &inside])?;
        ip(&["-n", &ns, "link", "set", &inside, "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 1)
    }

    /// Shard `i`'s address inside its namespace.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 10 + i as u8)
    }

    /// Shard `i`'s namespace name.
    pub fn name(&self, i: usize) -> &str {
        &self.shards[i].0
    }

    /// Takes shard `i`'s link down: nothing reaches it, it reaches nothing.
    pub fn cut(&self, i: usize) -> anyhow::Result<()> {
        ip(&["link", "set", &self.shards[i].1, "down"])
    }

    /// Brings shard `i`'s link back up.
    pub fn restore(&self, i: usize) -> anyhow::Result<()> {
        ip(&["link", "set", &self.shards[i].1, "up"])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for (ns, host) in self.shards.drain(..) {
            if !host.is_empty() {
                let _ = ip(&["link", "del", &host]);
            }
            let _ = ip(&["netns", "del", &ns]);
        }
        if let Some(bridge) = self.bridge.take() {
            let _ = ip(&["link", "del", &bridge]);
        }
    }
}
