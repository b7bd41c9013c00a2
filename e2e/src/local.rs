//! [`LocalCluster`]: a cluster of real `stead sidecar` + `counter` processes on this machine,
//! on loopback ports, or each shard in its own network namespace.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;

use crate::client::Client;
use crate::cluster::{CLASS, Cluster, DbFile};
use crate::netns::Netns;

/// How long a starting shard gets to become ready (generous: the machine may be busy).
const READY_ATTEMPTS: u32 = 600;
const READY_POLL: Duration = Duration::from_millis(100);

/// A port for a child process to listen on (see [`stead_testkit::ports`]).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(stead_testkit::ports::free_port()?)
}

/// A binary built beside the test executable: `target/{profile}/deps/test-…` →
/// `target/{profile}/{name}`. `STEAD_E2E_BIN_DIR` overrides the folder.
pub fn built_binary(name: &str) -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("STEAD_E2E_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().context("where is the test executable")?;
            let deps = exe.parent().context("test executable without a folder")?;
            let dir = if deps.file_name().is_some_and(|n| n == "deps") {
                deps.parent().context("deps without a parent")?
            } else {
                deps
            };
            dir.to_path_buf()
        }
    };
    let bin = dir.join(name);
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: build every binary first (`cargo build --workspace --bins`, which scripts/test.sh does)",
        bin.display()
    );
    Ok(bin)
}

/// The child of `cmd` gets SIGKILL when the thread that spawned it ends, so a killed test
/// binary leaves nothing running. A test's thread or a runtime worker lives as long as the test,
/// which drops its cluster before it ends anyway. (`stead dev` does the same; see
/// `stead_sidecar::dev::die_with_parent`.)
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    let parent = std::process::id();
    // SAFETY: runs in the forked child before exec; prctl and getppid are async-signal-safe and
    // nothing is allocated.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Where one shard's processes listen.
#[derive(Debug, Clone)]
pub struct ShardLayout {
    /// The network namespace the shard's processes run in, if any.
    pub netns: Option<String>,
    pub ingress: SocketAddr,
    pub peer: SocketAddr,
    pub admin: SocketAddr,
    pub api: SocketAddr,
    pub app: SocketAddr,
}

impl ShardLayout {
    fn loopback() -> anyhow::Result<Self> {
        let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        Ok(Self {
            netns: None,
            ingress: at(free_port()?),
            peer: at(free_port()?),
            admin: at(free_port()?),
            api: at(free_port()?),
            app: at(free_port()?),
        })
    }

    /// Client-facing ports on the namespace's address; the app and its API on the namespace's
    /// own loopback (the same port numbers in every namespace).
    fn in_netns(net: &Netns, i: usize) -> Self {
        let outside = |p: u16| SocketAddr::from((net.addr(i), p));
        let inside = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        Self {
            netns: Some(net.name(i).to_owned()),
            ingress: outside(8787),
            peer: outside(7878),
            admin: outside(9788),
            api: inside(9787),
            app: inside(3000),
        }
    }

    /// A command running `bin`, inside the shard's namespace if it has one; it dies with the
    /// test (see [`die_with_parent`]).
    fn command(&self, bin: &Path) -> Command {
        let mut cmd = match &self.netns {
            Some(ns) => {
                // `ip netns exec` execs `bin` in place: the parent-death signal carries over.
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(bin);
                cmd
            }
            None => Command::new(bin),
        };
        die_with_parent(&mut cmd);
        cmd
    }
}

struct LocalShard {
    layout: ShardLayout,
    /// `{root}/shard-{i}`: `data/` (the volume) and the processes' logs.
    dir: PathBuf,
    sidecar: Option<Child>,
    app: Option<Child>,
}

impl LocalShard {
    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `kill -9` both processes and reap them.
    fn kill(&mut self) {
        for child in [self.sidecar.take(), self.app.take()].into_iter().flatten() {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whichever process has exited, with its status.
    fn exited(&mut self) -> Option<String> {
        for (what, child) in [("sidecar", &mut self.sidecar), ("app", &mut self.app)] {
            if let Some(c) = child
                && let Ok(Some(status)) = c.try_wait()
            {
                return Some(format!("the {what} exited ({status})"));
            }
        }
        None
    }
}

/// One of a shard's two processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    Sidecar,
    App,
}

/// A cluster of real processes. Dropping it kills them and removes their data (kept, with the
/// logs, when the test failed).
pub struct LocalCluster {
    stead: PathBuf,
    /// The app binary every shard runs (the counter example unless started with another).
    app: PathBuf,
    /// The classes that app serves.
    classes: String,
    /// Extra flags for every sidecar.
    sidecar_args: Vec<String>,
    root: PathBuf,
    peer_token: String,
    peers: String,
    shards: Vec<Mutex<LocalShard>>,
    client: Client,
    /// Dropped after the processes (see `Drop`).
    netns: Option<Netns>,
}

impl LocalCluster {
    /// `shards` shards on loopback ports, running the counter example.
    pub async fn start(shards: usize) -> anyhow::Result<Self> {
        Self::start_app(shards, "counter", CLASS).await
    }

    /// `shards` shards on loopback ports, running the example binary `app` (built beside the
    /// tests) that serves `classes` (comma-separated).
    pub async fn start_app(shards: usize, app: &str, classes: &str) -> anyhow::Result<Self> {
        let layouts = (0..shards)
            .map(|_| ShardLayout::loopback())
            .collect::<anyhow::Result<Vec<_>>>()?;
        Self::start_with(layouts, None, app, classes, &[]).await
    }

    /// `shards` shards on loopback ports, running the counter example, with `sidecar_args`
    /// added to every sidecar's command line (e.g. `--max-concurrent-turns 2`).
    pub async fn start_with_sidecar_args(
        shards: usize,
        sidecar_args: &[&str],
    ) -> anyhow::Result<Self> {
        let layouts = (0..shards)
            .map(|_| ShardLayout::loopback())
            .collect::<anyhow::Result<Vec<_>>>()?;
        Self::start_with(layouts, None, "counter", CLASS, sidecar_args).await
    }

    /// `shards` shards on loopback ports, running the example binary `app` that serves
    /// `classes`, with `sidecar_args` added to every sidecar's command line.
    pub async fn start_app_with_sidecar_args(
        shards: usize,
        app: &str,
        classes: &str,
        sidecar_args: &[&str],
    ) -> anyhow::Result<Self> {
        let layouts = (0..shards)
            .map(|_| ShardLayout::loopback())
            .collect::<anyhow::Result<Vec<_>>>()?;
        Self::start_with(layouts, None, app, classes, sidecar_args).await
    }

    /// `shards` shards, each in its own network namespace (needs root; see
    /// [`crate::netns::unavailable`]).
    pub async fn start_in_netns(shards: usize) -> anyhow::Result<Self> {
        let net = Netns::create(shards)?;
        let layouts = (0..shards)
            .map(|i| ShardLayout::in_netns(&net, i))
            .collect();
        Self::start_with(layouts, Some(net), "counter", CLASS, &[]).await
    }

    async fn start_with(
        layouts: Vec<ShardLayout>,
        netns: Option<Netns>,
        app: &str,
        classes: &str,
        sidecar_args: &[&str],
    ) -> anyhow::Result<Self> {
        static CLUSTERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = CLUSTERS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let root = std::env::temp_dir().join(format!("stead-e2e-{}-{n}", std::process::id()));
        let peers = layouts
            .iter()
            .map(|l| l.peer.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut shards = vec![];
        for (i, layout) in layouts.into_iter().enumerate() {
            let dir = root.join(format!("shard-{i}"));
            std::fs::create_dir_all(dir.join("data"))
                .with_context(|| format!("create {}", dir.display()))?;
            shards.push(Mutex::new(LocalShard {
                layout,
                dir,
                sidecar: None,
                app: None,
            }));
        }
        let cluster = Self {
            stead: built_binary("stead")?,
            app: built_binary(app)?,
            classes: classes.to_owned(),
            sidecar_args: sidecar_args.iter().map(|a| a.to_string()).collect(),
            root,
            peer_token: format!("e2e-token-{}-{n}", std::process::id()),
            peers,
            shards,
            client: Client::new(),
            netns,
        };
        for i in 0..cluster.shards.len() {
            cluster.spawn(i)?;
        }
        for i in 0..cluster.shards.len() {
            cluster.wait_ready(i).await?;
        }
        Ok(cluster)
    }

    /// The folder of every shard's data and logs.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn shard(&self, i: usize) -> anyhow::Result<std::sync::MutexGuard<'_, LocalShard>> {
        let m = self
            .shards
            .get(i)
            .with_context(|| format!("no shard {i}"))?;
        Ok(m.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn layout(&self, i: usize) -> anyhow::Result<ShardLayout> {
        Ok(self.shard(i)?.layout.clone())
    }

    fn log_file(dir: &Path, what: &str) -> anyhow::Result<(File, File)> {
        let path = dir.join(format!("{what}.log"));
        let out = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        let err = out.try_clone()?;
        Ok((out, err))
    }

    /// `kill -9` one process of shard `shard` and reap it; [`LocalCluster::revive`] starts it
    /// again.
    pub fn kill_process(&self, shard: usize, which: Process) -> anyhow::Result<()> {
        let mut s = self.shard(shard)?;
        let child = match which {
            Process::Sidecar => s.sidecar.take(),
            Process::App => s.app.take(),
        };
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok(())
    }

    /// Starts whichever process of shard `shard` is not running (killed, or exited on its
    /// own) and waits until the shard is ready.
    pub async fn revive(&self, shard: usize) -> anyhow::Result<()> {
        {
            let mut guard = self.shard(shard)?;
            let s = &mut *guard;
            for child in [&mut s.sidecar, &mut s.app] {
                if let Some(c) = child
                    && let Ok(Some(_)) = c.try_wait()
                {
                    *child = None;
                }
            }
        }
        self.spawn(shard)?;
        self.wait_ready(shard).await
    }

    /// The process ids of every running process of the cluster.
    pub fn pids(&self) -> Vec<u32> {
        self.shards
            .iter()
            .flat_map(|s| {
                let s = s.lock().unwrap_or_else(|e| e.into_inner());
                [&s.sidecar, &s.app]
                    .into_iter()
                    .flatten()
                    .map(Child::id)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Starts whichever of shard `i`'s app and sidecar is not running (without waiting).
    fn spawn(&self, i: usize) -> anyhow::Result<()> {
        let mut shard = self.shard(i)?;
        let l = shard.layout.clone();
        if shard.app.is_none() {
            self.spawn_app(&mut shard, &l)?;
        }
        if shard.sidecar.is_none() {
            self.spawn_sidecar(&mut shard, &l, i)?;
        }
        Ok(())
    }

    fn spawn_app(&self, shard: &mut LocalShard, l: &ShardLayout) -> anyhow::Result<()> {
        let (out, err) = Self::log_file(&shard.dir, "app")?;
        let app = l
            .command(&self.app)
            .env(stead_core::protocol::ENV_APP_ADDR, l.app.to_string())
            .env(
                stead_core::protocol::ENV_API_URL,
                format!("http://{}", l.api),
            )
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("start {}", self.app.display()))?;
        shard.app = Some(app);
        Ok(())
    }

    fn spawn_sidecar(
        &self,
        shard: &mut LocalShard,
        l: &ShardLayout,
        i: usize,
    ) -> anyhow::Result<()> {
        let (out, err) = Self::log_file(&shard.dir, "sidecar")?;
        let log = std::env::var("STEAD_E2E_LOG").unwrap_or_else(|_| "warn".into());
        let sidecar = l
            .command(&self.stead)
            .arg("sidecar")
            .args(["--ingress", &l.ingress.to_string()])
            .args(["--api", &l.api.to_string()])
            .args(["--admin", &l.admin.to_string()])
            .args(["--app", &l.app.to_string()])
            .args(["--peer-addr", &l.peer.to_string()])
            .args(["--shard-ordinal", &i.to_string()])
            .args(["--peers", &self.peers])
            .arg("--data-dir")
            .arg(shard.data_dir())
            .args(["--classes", &self.classes])
            .args(&self.sidecar_args)
            .env("STEAD_PEER_TOKEN", &self.peer_token)
            .env("RUST_LOG", log)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("start {}", self.stead.display()))?;
        shard.sidecar = Some(sidecar);
        Ok(())
    }

    /// Waits until shard `i` answers `/readyz` with 200 (its app accepts connections) and its
    /// ingress and peer ports accept connections.
    async fn wait_ready(&self, i: usize) -> anyhow::Result<()> {
        let l = self.layout(i)?;
        let readyz = format!("http://{}/readyz", l.admin);
        for _ in 0..READY_ATTEMPTS {
            if let Some(why) = self.shard(i)?.exited() {
                anyhow::bail!(
                    "shard {i} did not start: {why}; logs in {}",
                    self.root.display()
                );
            }
            let ready = self
                .client
                .get(&readyz)
                .await
                .is_ok_and(|r| r.status == 200);
            if ready
                && tokio::net::TcpStream::connect(l.ingress).await.is_ok()
                && tokio::net::TcpStream::connect(l.peer).await.is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(READY_POLL).await;
        }
        anyhow::bail!(
            "shard {i} not ready after {:?}; logs in {}",
            READY_POLL * READY_ATTEMPTS,
            self.root.display()
        )
    }

    fn netns(&self) -> anyhow::Result<&Netns> {
        self.netns
            .as_ref()
            .context("this cluster runs on loopback, not in network namespaces")
    }
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                collect_files(&p, out);
            } else {
                out.push(p);
            }
        }
    }
}

#[async_trait]
impl Cluster for LocalCluster {
    fn entries(&self) -> Vec<String> {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(|e| e.into_inner());
                format!("http://{}", s.layout.ingress)
            })
            .collect()
    }

    fn shard_count(&self) -> usize {
        self.shards.len()
    }

    fn peer_url(&self, shard: usize) -> String {
        self.layout(shard)
            .map(|l| format!("http://{}", l.peer))
            .unwrap_or_default()
    }

    fn peer_token(&self) -> Option<String> {
        Some(self.peer_token.clone())
    }

    async fn kill(&self, shard: usize) -> anyhow::Result<()> {
        self.shard(shard)?.kill();
        Ok(())
    }

    async fn restart(&self, shard: usize) -> anyhow::Result<()> {
        self.shard(shard)?.kill();
        self.spawn(shard)?;
        self.wait_ready(shard).await
    }

    async fn metrics(&self, shard: usize) -> anyhow::Result<String> {
        let url = format!("http://{}/metrics", self.layout(shard)?.admin);
        let reply = self.client.get(&url).await.map_err(anyhow::Error::msg)?;
        anyhow::ensure!(reply.status == 200, "{url}: {}", reply.status);
        Ok(reply.body)
    }

    fn database_files(&self) -> Option<Vec<DbFile>> {
        let mut out = vec![];
        for (i, s) in self.shards.iter().enumerate() {
            let s = s.lock().unwrap_or_else(|e| e.into_inner());
            let mut files = vec![];
            collect_files(&s.data_dir().join("slots"), &mut files);
            out.extend(
                files
                    .into_iter()
                    .filter(|p| p.extension().is_some_and(|e| e == "sqlite"))
                    .map(|path| DbFile { shard: i, path }),
            );
        }
        Some(out)
    }

    fn can_partition(&self) -> bool {
        self.netns.is_some()
    }

    async fn isolate(&self, shard: usize) -> anyhow::Result<()> {
        self.netns()?.cut(shard)
    }

    async fn heal(&self, shard: usize) -> anyhow::Result<()> {
        self.netns()?.restore(shard)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for s in &self.shards {
            s.lock().unwrap_or_else(|e| e.into_inner()).kill();
        }
        if std::thread::panicking() {
            eprintln!(
                "stead-e2e: the test failed; data and logs kept in {}",
                self.root.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.root);
        }
        // `netns` is dropped after this, once no process runs in the namespaces.
    }
}
