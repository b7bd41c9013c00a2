//! `stead dev`: the local mode. Runs one or more shards on loopback, each a sidecar and an
//! app (a bundled example, or the user's [`Project`] in the current folder) as child processes
//! with its own data folder; restarts a process that exits, reloads a project's shards when its
//! source changes, and stops everything cleanly on Ctrl-C or SIGTERM.
//!
//! Ports of shard `i`, with `p` = `--port` (see `docs/local-cluster.md`):
//!
//! | port | shard `i` | one shard (`p` = 8787) |
//! |---|---|---|
//! | ingress | `p + i` | 8787 |
//! | app API | `p + 1000 + 10·i` | 9787 |
//! | admin | `p + 1001 + 10·i` | 9788 |
//! | app | `p + 1002 + 10·i` | 9789 |
//! | peer | `p + 1003 + 10·i` | 9790 |
//! | second app (a project's reload, TCP only) | `p + 1004 + 10·i` | 9791 |
//!
//! Ingress ports stay below `p + 1000` because `--shards` is at most [`MAX_SHARDS`], and each
//! shard's other ports sit in their own block of ten, so no two ports of a cluster collide.
//!
//! A project ([`crate::project`]) is watched ([`crate::watch`]); after a change it is prepared
//! again (described, or rebuilt) and every shard is reloaded: the new app starts beside the
//! old one, on the other of two addresses, and replaces it once it listens.
//!
//! The children die with `stead dev`, even with `kill -9` (a parent-death signal), and a second
//! `stead dev` refuses to start on a data folder that one already uses (a lock file) or on a port
//! that something already holds, instead of talking to whatever listens there.
//!
//! The cluster's size lives in `{data}/cluster.json` ([`ClusterRecord`]), shard `i`'s data in
//! `{data}/shard-{i}` whatever the size. A loopback control port (written with its token into
//! [`CONTROL_FILE`]) lets `stead scale` resize the running cluster: a grow starts the new shards
//! and then asks shard 0 to reshard; a shrink reshards first and then stops the shards that no
//! longer own slots. The resize is recorded before it begins, so a `stead dev` killed in the
//! middle resumes it at its next start.

use std::ffi::OsString;
use std::io::IsTerminal as _;
use std::os::fd::AsRawFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};

use crate::error::ApiError;
use crate::project::{Prepared, Project, ProjectError};
use crate::scale::{
    CONTROL_FILE, CONTROL_TOKEN, ControlFile, RESIZE_PATH, ResizeProgress, ResizeState, json_call,
};

/// Most shards `stead dev` runs (keeps every ingress port below the other ports); `stead scale`
/// checks it too, so it lives with the control protocol.
pub use crate::scale::MAX_SHARDS;

/// Sidecar environment variables that `stead dev` sets itself, or that only Kubernetes uses (a
/// shutdown delay exported in the shell would slow every local stop), so none leaks in.
const PEER_ENV: [&str; 8] = [
    "STEAD_SHARD_ORDINAL",
    "STEAD_PEERS",
    "STEAD_PEER_ADDR",
    "STEAD_PEER_TOKEN",
    "STEAD_PEER_TEMPLATE",
    "STEAD_RING_SHARDS",
    "STEAD_RING_EPOCH",
    "STEAD_SHUTDOWN_DELAY",
];

/// `--data-dir` unless given; a project's is in its own folder.
pub const DEFAULT_DATA_DIR: &str = ".stead/dev";

/// A restarted process that lived shorter than this waits longer before its next restart.
const STABLE_AFTER: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long a process gets to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// In the data folder: held locked (`flock`) by the `stead dev` that uses the folder.
pub const LOCK_FILE: &str = ".stead-dev.lock";
/// In the data folder: the cluster's size and ring epoch ([`ClusterRecord`]).
pub const CLUSTER_FILE: &str = "cluster.json";
/// What a one-shard data folder of earlier versions held at its root (moved into `shard-0/`).
const SHARD_ENTRIES: [&str; 5] = [
    "shard.sqlite",
    "shard.sqlite-wal",
    "shard.sqlite-shm",
    "shard.sqlite-journal",
    "slots",
];
/// How often a resize asks shard 0 for the reshard's progress.
const RESHARD_POLL: Duration = Duration::from_millis(250);
/// How long a resize waits for shard 0's peer port to answer again (e.g. while it restarts).
const SHARD0_PATIENCE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Example app to run: `life` (multiplayer Game of Life), `chat` or `counter`. Without it
    /// (and without --app-bin), `stead dev` runs the project in --project (default: the current
    /// folder) if there is one, else `life`.
    #[arg(long, value_parser = ["life", "chat", "counter"])]
    pub example: Option<String>,
    /// The project to run: a folder with a wrangler config (wrangler.toml, wrangler.json or
    /// wrangler.jsonc), or a Cargo project with a DurableNamespace manifest (stead.yaml, or
    /// one in k8s/). Default: the current folder, when it holds one. Its source is watched, and
    /// a change reloads the app.
    #[arg(long, conflicts_with_all = ["example", "app_bin"])]
    pub project: Option<PathBuf>,
    /// Port of shard 0's ingress on 127.0.0.1; shard i's ingress is port+i. Shard i's app API,
    /// admin, app and peer ports are port+1000+10*i, +1001, +1002 and +1003.
    #[arg(long, default_value_t = 8787)]
    pub port: u16,
    /// Shards to run, each a sidecar and an app. Default: the size recorded in the data folder,
    /// else 1. A different size than the recorded one starts the recorded size and then
    /// reshards to this one (as `stead scale` does).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_SHARDS)))]
    pub shards: Option<u16>,
    /// Folder for the objects' data (shard i uses `{data-dir}/shard-{i}`).
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// The app binary to run instead of the example's.
    #[arg(long)]
    pub app_bin: Option<PathBuf>,
    /// Extra flags for every sidecar, e.g. `--sidecar-arg=--idle-timeout=2s`.
    #[arg(long = "sidecar-arg", allow_hyphen_values = true)]
    pub sidecar_args: Vec<String>,
    /// How each sidecar reaches its app: `unix` (a Unix domain socket in the shard's folder,
    /// the faster) or `tcp` (a loopback port). Default: `unix` for the bundled examples, `tcp`
    /// with --app-bin (an app that is not built with the Rust SDK may only listen on TCP).
    #[arg(long, value_enum)]
    pub app_transport: Option<AppTransport>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AppTransport {
    Tcp,
    Unix,
}

/// The longest socket path the kernel takes (`sun_path` is 108 bytes with its NUL), with room.
const MAX_SOCKET_PATH: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error(
        "cannot find the {example} app binary next to {exe} and this is not a source checkout; build it with `cargo build --release -p {example}` or pass --app-bin"
    )]
    NoApp { example: String, exe: String },
    #[error("building the {example} app failed: {detail}")]
    Build { example: String, detail: String },
    #[error("cannot start {what}: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    #[error("{what} exited while starting ({status}); see its log above")]
    Exited { what: String, status: String },
    #[error("{what} did not start listening on {addr} within 30 s")]
    NotReady { what: String, addr: String },
    #[error("--port {port} with {shards} shards needs ports above 65535")]
    PortRange { port: u16, shards: u16 },
    #[error("cannot generate the peer token: {0}")]
    Random(getrandom::Error),
    #[error(
        "another `stead dev` is running on the data folder {dir}; stop it first, or pass another --data-dir"
    )]
    DataDirInUse { dir: String },
    #[error(
        "port {port} ({what}) is already in use on 127.0.0.1, perhaps by another `stead dev` or by processes a killed one left behind; stop what holds it, or pick other ports with --port"
    )]
    PortInUse { port: u16, what: String },
    #[error(
        "the data folder {dir} holds {entry} both at its root (the one-shard layout of earlier versions) and in shard-0/; move one of them away"
    )]
    LayoutConflict { dir: String, entry: String },
    #[error("the cluster record {file} is unreadable ({detail}); fix or remove it")]
    BadRecord { file: String, detail: String },
    #[error("resharding on shard 0 failed: {0}")]
    Reshard(String),
    #[error(
        "no project in {dir}: it holds no wrangler config (wrangler.toml, wrangler.json, wrangler.jsonc) and no Cargo.toml with a DurableNamespace manifest (stead.yaml, or one in k8s/); `stead init` makes one"
    )]
    NoProject { dir: String },
    #[error(transparent)]
    Project(#[from] ProjectError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The size of the local cluster, kept in `{data}/cluster.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// Shards of the ring.
    pub shards: u16,
    /// The ring's epoch (grows with every reshard).
    pub epoch: u64,
    /// A resize that began and has not finished: resumed at the next start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resizing_to: Option<u16>,
}

impl ClusterRecord {
    /// Shards whose processes run: during a resize, also the shards joining or leaving.
    pub fn running(&self) -> u16 {
        self.shards.max(self.resizing_to.unwrap_or(0))
    }
}

/// The classes each example app serves.
fn classes_of(example: &str) -> &'static str {
    match example {
        "life" => "Lobby,GameRoom",
        "chat" => "ChatRoom",
        _ => "Counter",
    }
}

/// What to try first, given the ingress address.
fn try_lines(running: &Running, classes: &str, ingress: &str) -> String {
    let example = match running {
        Running::Example(example) => example.as_str(),
        Running::Project(_) => "",
    };
    match example {
        "" => {
            let class = classes.split(',').next().unwrap_or_default();
            format!(
                "  curl http://{ingress}/objects/{class}/name/demo/   (any of the classes {classes})\n  a change to the project's source reloads it"
            )
        }
        "life" => format!(
            "  open http://{ingress}/ in two browser windows, join the same room, click cells"
        ),
        "chat" => format!("  open http://{ingress}/ in two browser windows and chat"),
        _ => format!(
            "  curl -X POST http://{ingress}/objects/Counter/name/demo/increment\n  curl http://{ingress}/objects/Counter/name/demo/value"
        ),
    }
}

/// The loopback ports of one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardPorts {
    pub ingress: u16,
    pub api: u16,
    pub admin: u16,
    pub app: u16,
    pub peer: u16,
    /// The app's port after an odd number of reloads of a project (TCP transport only).
    pub app_alt: u16,
}

impl ShardPorts {
    /// The ports of shard `ordinal` when shard 0's ingress is `base`; `None` past 65535.
    pub fn of(base: u16, ordinal: u16) -> Option<Self> {
        let block = base
            .checked_add(1000)?
            .checked_add(ordinal.checked_mul(10)?)?;
        Some(Self {
            ingress: base.checked_add(ordinal)?,
            api: block,
            admin: block.checked_add(1)?,
            app: block.checked_add(2)?,
            peer: block.checked_add(3)?,
            app_alt: block.checked_add(4)?,
        })
    }
}

fn local(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// One shard's place in the cluster.
#[derive(Debug, Clone)]
struct ShardSpec {
    ordinal: u16,
    ports: ShardPorts,
    data_dir: PathBuf,
    /// The app listens on its second address (`app-2.sock`, or the port `app_alt`): each
    /// reload starts the new app on the address the running one does not use.
    alt_app: bool,
}

/// The ring and peers a sidecar is (re)started with; changes with each resize.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Topology {
    ring_shards: u16,
    epoch: u64,
    /// The peer address of every running shard in ordinal order (more than the ring's shards
    /// while shards join or leave).
    peers: Vec<String>,
}

/// What `stead dev` runs.
#[derive(Debug, Clone)]
enum Running {
    Example(String),
    Project(Project),
}

impl Running {
    /// "the counter example", "the Cargo project in /home/me/hello".
    fn title(&self) -> String {
        match self {
            Running::Example(example) => format!("the {example} example"),
            Running::Project(p) => format!("the {} in {}", p.kind(), p.dir().display()),
        }
    }
}

/// The app program each shard runs, and the classes its sidecar serves. A project's changes
/// with a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AppLaunch {
    program: PathBuf,
    args: Vec<OsString>,
    /// The app's working folder (a project's); else `stead dev`'s.
    dir: Option<PathBuf>,
    /// `--classes` of every sidecar.
    classes: String,
}

impl AppLaunch {
    fn of_example(example: &str, program: PathBuf) -> Self {
        Self {
            program,
            args: vec![],
            dir: None,
            classes: classes_of(example).to_owned(),
        }
    }

    fn of_project(prepared: &Prepared) -> Self {
        Self {
            program: prepared.program.clone(),
            args: prepared.args.clone(),
            dir: Some(prepared.dir.clone()),
            classes: prepared.classes.join(","),
        }
    }
}

/// What every shard is started with.
#[derive(Debug)]
struct Launch {
    exe: PathBuf,
    app: Mutex<AppLaunch>,
    app_transport: AppTransport,
    running: Running,
    /// Bumped by each reload: every shard supervisor restarts its sidecar and app.
    reloads: watch::Sender<u64>,
    sidecar_args: Vec<String>,
    /// `--port`: shard 0's ingress.
    base_port: u16,
    data_dir: PathBuf,
    topology: Mutex<Topology>,
    /// The shared peer secret of this run (also with one shard, so that it can be resharded).
    peer_token: String,
}

impl Launch {
    fn topology(&self) -> Topology {
        self.topology
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn app(&self) -> AppLaunch {
        self.app.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_app(&self, app: AppLaunch) {
        *self.app.lock().unwrap_or_else(|p| p.into_inner()) = app;
    }

    fn update(&self, f: impl FnOnce(&mut Topology)) {
        f(&mut self.topology.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn several(&self) -> bool {
        self.topology().peers.len() > 1
    }

    fn spec(&self, ordinal: u16) -> Result<ShardSpec, DevError> {
        let ports = ShardPorts::of(self.base_port, ordinal).ok_or(DevError::PortRange {
            port: self.base_port,
            shards: ordinal + 1,
        })?;
        Ok(ShardSpec {
            ordinal,
            ports,
            data_dir: shard_dir(&self.data_dir, ordinal),
            alt_app: false,
        })
    }

    /// The peer addresses of shards `0..n`.
    fn peers(&self, n: u16) -> Vec<String> {
        (0..n)
            .filter_map(|i| ShardPorts::of(self.base_port, i))
            .map(|p| local(p.peer))
            .collect()
    }

    /// Where shard `spec`'s app listens: `unix:{shard folder}/app.sock`, or its loopback port
    /// (also when the socket's path would be too long for the kernel).
    fn app_addr(&self, spec: &ShardSpec) -> String {
        let (sock, port) = if spec.alt_app {
            ("app-2.sock", spec.ports.app_alt)
        } else {
            ("app.sock", spec.ports.app)
        };
        let sock = spec.data_dir.join(sock);
        match self.app_transport {
            AppTransport::Unix if sock.as_os_str().len() <= MAX_SOCKET_PATH => {
                format!("{}{}", crate::app::UNIX_PREFIX, sock.display())
            }
            _ => local(port),
        }
    }

    /// The second app port a reload of a project may use (with the TCP transport).
    fn alt_app_port(&self, spec: &ShardSpec) -> Option<u16> {
        let alt = ShardSpec {
            alt_app: true,
            ..spec.clone()
        };
        (matches!(self.running, Running::Project(_))
            && !self.app_addr(&alt).starts_with(crate::app::UNIX_PREFIX))
        .then_some(spec.ports.app_alt)
    }

    fn app_command(&self, spec: &ShardSpec) -> Command {
        let app = self.app();
        let mut cmd = Command::new(&app.program);
        cmd.args(&app.args);
        if let Some(dir) = &app.dir {
            cmd.current_dir(dir);
        }
        cmd.env(stead_core::protocol::ENV_APP_ADDR, self.app_addr(spec))
            .env(
                stead_core::protocol::ENV_API_URL,
                format!("http://{}", local(spec.ports.api)),
            );
        cmd
    }

    fn sidecar_command(&self, spec: &ShardSpec) -> Command {
        let p = spec.ports;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("sidecar")
            .args(["--ingress", &local(p.ingress)])
            .args(["--api", &local(p.api)])
            .args(["--admin", &local(p.admin)])
            .args(["--app", &self.app_addr(spec)])
            .args(["--peer-addr", &local(p.peer)])
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .args(["--classes", &self.app().classes]);
        for var in PEER_ENV {
            cmd.env_remove(var);
        }
        // Read at every (re)start: a restart after a resize gets the new ring and peers.
        let topology = self.topology();
        cmd.args(["--shard-ordinal", &spec.ordinal.to_string()])
            .args(["--peers", &topology.peers.join(",")])
            .args(["--ring-shards", &topology.ring_shards.to_string()])
            .args(["--ring-epoch", &topology.epoch.to_string()])
            // In the environment, not on the command line, where `ps` would show it.
            .env("STEAD_PEER_TOKEN", &self.peer_token);
        cmd.args(&self.sidecar_args);
        cmd
    }
}

/// Which of a shard's two processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Sidecar,
    App,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Sidecar => "sidecar",
            Role::App => "app",
        }
    }
}

/// A supervised child process.
struct Proc {
    role: Role,
    child: Child,
    started: Instant,
    backoff: Duration,
}

impl Proc {
    async fn spawn(launch: &Launch, spec: &ShardSpec, role: Role) -> Result<Self, DevError> {
        let cmd = match role {
            Role::Sidecar => launch.sidecar_command(spec),
            Role::App => launch.app_command(spec),
        };
        let prefix = launch
            .several()
            .then(|| format!("shard-{} {}", spec.ordinal, role.name()));
        let child = spawn_child(cmd, prefix)
            .await
            .map_err(|source| DevError::Spawn {
                what: match role {
                    Role::Sidecar => "the sidecar".into(),
                    Role::App => launch.app().program.display().to_string(),
                },
                source,
            })?;
        Ok(Self {
            role,
            child,
            started: Instant::now(),
            backoff: FIRST_BACKOFF,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// The wait before restarting: short after a long run, doubling while it keeps failing.
    fn next_backoff(&mut self) -> Duration {
        if self.started.elapsed() >= STABLE_AFTER {
            self.backoff = FIRST_BACKOFF;
        }
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        wait
    }

    /// Starts the process again in place; keeps the backoff.
    async fn respawn(&mut self, launch: &Launch, spec: &ShardSpec) -> Result<(), DevError> {
        let fresh = Self::spawn(launch, spec, self.role).await?;
        self.child = fresh.child;
        self.started = fresh.started;
        Ok(())
    }
}

/// Spawns `cmd` in its own process group (so a terminal's Ctrl-C reaches only `stead dev`,
/// which then stops the children in order), dying with `stead dev`. With a `prefix`, each output
/// line is printed after it.
async fn spawn_child(mut cmd: Command, prefix: Option<String>) -> std::io::Result<Child> {
    cmd.stdin(Stdio::null()).kill_on_drop(true).process_group(0);
    die_with_parent(cmd.as_std_mut());
    if prefix.is_some() {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        if !std::io::stdout().is_terminal() {
            // The children see a pipe either way; colours only help a terminal.
            cmd.env("NO_COLOR", "1");
        }
    }
    let mut child = spawn_from_keeper(cmd).await?;
    if let Some(prefix) = prefix {
        if let Some(out) = child.stdout.take() {
            tokio::spawn(print_lines(out, prefix.clone(), false));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(print_lines(err, prefix, true));
        }
    }
    Ok(child)
}

/// Makes the child of `cmd` receive SIGKILL when its parent dies, `kill -9` included
/// (`PR_SET_PDEATHSIG`). The signal fires when the *thread* that spawned the child exits: spawn
/// from a thread that lives as long as the process ([`spawn_from_keeper`] does).
pub fn die_with_parent(cmd: &mut std::process::Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and calls only async-signal-safe
    // functions (prctl, getppid); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then no signal will come.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

type SpawnJob = (
    Command,
    tokio::runtime::Handle,
    oneshot::Sender<std::io::Result<Child>>,
);

/// Spawns `cmd` from one thread kept for the life of the process (tokio's threads may exit, and
/// with them the parent-death signal of what they spawned).
async fn spawn_from_keeper(cmd: Command) -> std::io::Result<Child> {
    static KEEPER: OnceLock<Mutex<std::sync::mpsc::Sender<SpawnJob>>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<SpawnJob>();
        let started = std::thread::Builder::new()
            .name("stead-dev-spawner".into())
            .spawn(move || {
                // The sender lives in a static: this loop ends only with the process.
                while let Ok((mut cmd, runtime, reply)) = rx.recv() {
                    let _runtime = runtime.enter();
                    let _ = reply.send(cmd.spawn());
                }
            });
        if let Err(e) = started {
            tracing::error!(error = %e, "cannot start the spawner thread");
        }
        Mutex::new(tx)
    });
    let (reply, answer) = oneshot::channel();
    let job = (cmd, tokio::runtime::Handle::current(), reply);
    let gone = || std::io::Error::other("the spawner thread is gone");
    keeper
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(job)
        .map_err(|_| gone())?;
    answer.await.map_err(|_| gone())?
}

/// Locks the data folder for this `stead dev` (released when the file closes, at exit or
/// death); refuses if another one holds it.
fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, DevError> {
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(data_dir.join(LOCK_FILE))?;
    // SAFETY: flock(2) on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            DevError::DataDirInUse {
                dir: data_dir.display().to_string(),
            }
        } else {
            DevError::Io(e)
        });
    }
    Ok(file)
}

/// Refuses to start when any port of any shard is already taken: the children would fail to
/// bind, or worse, `stead dev` would talk to whatever listens there.
fn check_ports_free(launch: &Launch, specs: &[ShardSpec]) -> Result<(), DevError> {
    for spec in specs {
        let p = spec.ports;
        for (port, what) in [
            (p.ingress, "ingress"),
            (p.api, "app API"),
            (p.admin, "admin"),
            (p.app, "app"),
            (p.peer, "peer"),
        ]
        .into_iter()
        .chain(launch.alt_app_port(spec).map(|port| (port, "second app")))
        {
            if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", port)) {
                if e.kind() != std::io::ErrorKind::AddrInUse {
                    return Err(DevError::Io(e));
                }
                let what = if launch.several() {
                    format!("{what} of shard {}", spec.ordinal)
                } else {
                    format!("the {what}")
                };
                return Err(DevError::PortInUse { port, what });
            }
        }
    }
    Ok(())
}

async fn print_lines<R: AsyncRead + Unpin>(reader: R, prefix: String, to_stderr: bool) {
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if to_stderr {
            eprintln!("{prefix} | {line}");
        } else {
            println!("{prefix} | {line}");
        }
    }
}

/// A running shard: its sidecar and its app.
struct Shard {
    spec: ShardSpec,
    sidecar: Proc,
    app: Proc,
}

impl Shard {
    /// Starts the app and the sidecar and waits until both listen.
    async fn start(launch: &Launch, spec: ShardSpec) -> Result<Self, DevError> {
        std::fs::create_dir_all(&spec.data_dir)?;
        let app = Self::start_app(launch, &spec).await?;
        let sidecar = Self::start_sidecar(launch, &spec).await?;
        Ok(Self { spec, sidecar, app })
    }

    /// Starts the app on the address of `spec` and waits until it listens.
    async fn start_app(launch: &Launch, spec: &ShardSpec) -> Result<Proc, DevError> {
        let app_addr = launch.app_addr(spec);
        if let Some(sock) = app_addr.strip_prefix(crate::app::UNIX_PREFIX) {
            // A socket file left by an app that was killed: the new app binds it afresh.
            match std::fs::remove_file(sock) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        let mut app = Proc::spawn(launch, spec, Role::App).await?;
        let what = shard_label(launch, spec, Role::App);
        wait_listening(&mut app.child, &what, &app_addr).await?;
        Ok(app)
    }

    /// Starts the sidecar and waits until it listens.
    async fn start_sidecar(launch: &Launch, spec: &ShardSpec) -> Result<Proc, DevError> {
        let mut sidecar = Proc::spawn(launch, spec, Role::Sidecar).await?;
        let what = shard_label(launch, spec, Role::Sidecar);
        // The admin port, not the ingress: something else may already hold the ingress port,
        // and then the sidecar exits instead of listening.
        wait_listening(&mut sidecar.child, &what, &local(spec.ports.admin)).await?;
        // The peer port too: a reshard reaches every shard there.
        wait_listening(&mut sidecar.child, &what, &local(spec.ports.peer)).await?;
        Ok(sidecar)
    }

    /// Moves the shard to the launch's current app: starts the new app beside the running one
    /// (on the other address), and only once it listens replaces the sidecar (whose stop
    /// closes the shard's WebSockets with 1012, so clients reconnect to the new version) and
    /// stops the old app. A new app that does not start changes nothing.
    async fn reload(&mut self, launch: &Launch) {
        let what = if launch.several() {
            format!("shard {}", self.spec.ordinal)
        } else {
            "the sidecar and the app".to_owned()
        };
        let next = ShardSpec {
            alt_app: !self.spec.alt_app,
            ..self.spec.clone()
        };
        let app = match Self::start_app(launch, &next).await {
            Ok(app) => app,
            Err(e) => {
                println!(
                    "stead dev: the new version did not start ({e}); still running the previous version until the next change"
                );
                return;
            }
        };
        stop(
            &mut self.sidecar.child,
            &shard_label(launch, &self.spec, Role::Sidecar),
        )
        .await;
        let mut old_app = std::mem::replace(&mut self.app, app);
        let old_label = shard_label(launch, &self.spec, Role::App);
        self.spec = next;
        match Self::start_sidecar(launch, &self.spec).await {
            Ok(sidecar) => {
                self.sidecar = sidecar;
                println!(
                    "stead dev: reloaded {what} (sidecar pid {}, app pid {})",
                    self.sidecar.pid(),
                    self.app.pid()
                );
            }
            // The stopped sidecar stays in place: the supervisor restarts it as after any exit.
            Err(e) => println!("stead dev: reloading {what}: {e}"),
        }
        stop(&mut old_app.child, &old_label).await;
    }

    /// Stops the sidecar first (its in-flight turns still reach the app), then the app.
    async fn stop(&mut self, launch: &Launch) {
        stop(
            &mut self.sidecar.child,
            &shard_label(launch, &self.spec, Role::Sidecar),
        )
        .await;
        stop(
            &mut self.app.child,
            &shard_label(launch, &self.spec, Role::App),
        )
        .await;
    }

    fn proc_mut(&mut self, role: Role) -> &mut Proc {
        match role {
            Role::Sidecar => &mut self.sidecar,
            Role::App => &mut self.app,
        }
    }
}

/// "the sidecar" with one shard, "the sidecar of shard 2" with several.
fn shard_label(launch: &Launch, spec: &ShardSpec, role: Role) -> String {
    if launch.several() {
        format!("the {} of shard {}", role.name(), spec.ordinal)
    } else {
        format!("the {}", role.name())
    }
}

/// What to run: `--example` or `--app-bin` say an example; else the project in `--project`
/// (default: the current folder, falling back to the `life` example when it holds none).
fn choose(args: &DevArgs) -> Result<Running, DevError> {
    if args.example.is_some() || args.app_bin.is_some() {
        return Ok(Running::Example(
            args.example.clone().unwrap_or_else(|| "life".into()),
        ));
    }
    let dir = match &args.project {
        Some(dir) => std::fs::canonicalize(dir).map_err(|_| DevError::NoProject {
            dir: dir.display().to_string(),
        })?,
        None => std::env::current_dir()?,
    };
    match Project::find(&dir)? {
        Some(project) => Ok(Running::Project(project)),
        None if args.project.is_some() => Err(DevError::NoProject {
            dir: dir.display().to_string(),
        }),
        None => {
            println!(
                "stead dev: no project in {} (no wrangler config, no Cargo.toml with a DurableNamespace manifest); running the life example",
                dir.display()
            );
            Ok(Running::Example("life".into()))
        }
    }
}

pub async fn run(args: DevArgs) -> Result<(), DevError> {
    let exe = std::env::current_exe()?;
    let chosen = blocking({
        let args = args.clone();
        move || choose(&args)
    })
    .await?;
    let (app, watch_paths) = match &chosen {
        Running::Example(example) => {
            let program = match &args.app_bin {
                Some(p) => p.clone(),
                None => find_or_build_app(&exe, example).await?,
            };
            (AppLaunch::of_example(example, program), None)
        }
        Running::Project(project) => {
            let prepared = project.prepare().await?;
            (AppLaunch::of_project(&prepared), Some(prepared.watch))
        }
    };
    // A project keeps its data in its own folder unless told otherwise.
    let data_dir = match &chosen {
        Running::Project(p) if args.data_dir == Path::new(DEFAULT_DATA_DIR) => {
            p.dir().join(DEFAULT_DATA_DIR)
        }
        _ => args.data_dir.clone(),
    };
    let data_dir = blocking({
        let dir = data_dir;
        move || {
            std::fs::create_dir_all(&dir)?;
            std::fs::canonicalize(&dir)
        }
    })
    .await?;
    // Held until `stead dev` ends.
    let _lock = blocking({
        let dir = data_dir.clone();
        move || lock_data_dir(&dir)
    })
    .await?;
    let recorded = blocking({
        let dir = data_dir.clone();
        move || {
            if adopt_single_layout(&dir)? {
                println!(
                    "stead dev: moved the one-shard data of {} into shard-0/ (the layout of every size)",
                    dir.display()
                );
            }
            read_record(&dir)
        }
    })
    .await?;
    let plan = StartPlan::of(recorded, args.shards);
    let record = plan.record;
    // Also when inferred from a folder of an earlier version: from now on the file says it.
    save_record(&data_dir, record).await?;
    let app_transport = args.app_transport.unwrap_or(if args.app_bin.is_some() {
        AppTransport::Tcp
    } else {
        AppTransport::Unix
    });
    let launch = Arc::new(Launch {
        exe,
        app: Mutex::new(app),
        app_transport,
        running: chosen.clone(),
        reloads: watch::channel(0).0,
        sidecar_args: args.sidecar_args.clone(),
        base_port: args.port,
        data_dir: data_dir.clone(),
        topology: Mutex::new(Topology {
            ring_shards: record.shards,
            epoch: record.epoch,
            peers: vec![],
        }),
        peer_token: random_hex()?,
    });
    let running = record.running();
    launch.update(|t| t.peers = launch.peers(running));
    let specs = (0..running)
        .map(|i| launch.spec(i))
        .collect::<Result<Vec<_>, _>>()?;

    check_ports_free(&launch, &specs)?;
    let mut shards = Vec::with_capacity(specs.len());
    for spec in specs {
        // On an error, the shards started so far are dropped, which kills their processes.
        shards.push(Shard::start(&launch, spec).await?);
    }
    print_banner(&launch, &shards, &data_dir);

    let cluster = Arc::new(Cluster {
        launch: launch.clone(),
        record: Mutex::new(record),
        supervised: tokio::sync::Mutex::new(vec![]),
        progress: Mutex::new(ResizeProgress {
            from: record.shards,
            to: record.shards,
            epoch: record.epoch,
            ..ResizeProgress::default()
        }),
        resize_task: Mutex::new(None),
        control_token: random_hex()?,
    });
    for shard in shards {
        cluster.supervise(shard).await;
    }
    let control = start_control(&cluster).await?;
    let watcher = match (&chosen, watch_paths) {
        (Running::Project(project), Some(paths)) => Some(tokio::spawn(watch_project(
            launch.clone(),
            project.clone(),
            paths,
            vec![data_dir.clone()],
        ))),
        _ => None,
    };
    if let Some(to) = record.resizing_to {
        println!(
            "stead dev: resuming the resize from {} to {to} shards that a stopped `stead dev` began",
            record.shards
        );
    }
    if let Some(k) = plan.then_resize_to {
        println!(
            "stead dev: the data folder holds a cluster of {} shards; serving it at that size, then resharding it to {k} shards (--shards {k})",
            record.resizing_to.unwrap_or(record.shards)
        );
    }
    let startup = {
        let cluster = cluster.clone();
        let targets: Vec<u16> = record
            .resizing_to
            .into_iter()
            .chain(plan.then_resize_to)
            .collect();
        tokio::spawn(async move {
            for to in targets {
                if let Err(e) = cluster.resize_and_wait(to).await {
                    println!("stead dev: {e}");
                    break;
                }
            }
        })
    };

    crate::sidecar::shutdown_signal().await;
    println!("stead dev: stopping; shutting down");
    startup.abort();
    control.abort();
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    if let Err(e) = tokio::fs::remove_file(data_dir.join(CONTROL_FILE)).await {
        println!("stead dev: cannot remove the control file: {e}");
    }
    cluster.stop_all().await;
    println!("stead dev: stopped");
    Ok(())
}

/// Runs blocking file-system work off the runtime's threads.
async fn blocking<T: Send + 'static, E: From<std::io::Error> + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| E::from(std::io::Error::other(e)))?
}

/// The data folder of shard `ordinal`, whatever the cluster's size.
fn shard_dir(data_dir: &Path, ordinal: u16) -> PathBuf {
    data_dir.join(format!("shard-{ordinal}"))
}

/// Moves a one-shard data folder of earlier versions (`shard.sqlite` and `slots/` at its root)
/// into `shard-0/`. Each entry moves on its own (a rename), so a move cut short finishes at the
/// next start. Returns whether anything moved. Runs under the data folder's lock.
fn adopt_single_layout(data_dir: &Path) -> Result<bool, DevError> {
    let target = shard_dir(data_dir, 0);
    let mut moved = false;
    for entry in SHARD_ENTRIES {
        let from = data_dir.join(entry);
        if std::fs::symlink_metadata(&from).is_err() {
            continue;
        }
        let to = target.join(entry);
        if std::fs::symlink_metadata(&to).is_ok() {
            return Err(DevError::LayoutConflict {
                dir: data_dir.display().to_string(),
                entry: entry.to_owned(),
            });
        }
        std::fs::create_dir_all(&target)?;
        std::fs::rename(&from, &to)?;
        moved = true;
    }
    if moved {
        std::fs::File::open(&target)?.sync_all()?;
        std::fs::File::open(data_dir)?.sync_all()?;
    }
    Ok(moved)
}

/// The recorded size: `cluster.json`, else (a data folder of an earlier version) the number of
/// `shard-{i}` folders holding a `shard.sqlite`, counted from 0; `None` for a fresh folder.
fn read_record(data_dir: &Path) -> Result<Option<ClusterRecord>, DevError> {
    let file = data_dir.join(CLUSTER_FILE);
    match std::fs::read(&file) {
        Ok(raw) => {
            let bad = |detail: String| DevError::BadRecord {
                file: CLUSTER_FILE.to_owned(),
                detail,
            };
            let record: ClusterRecord =
                serde_json::from_slice(&raw).map_err(|e| bad(e.to_string()))?;
            if record.shards == 0
                || record.shards > MAX_SHARDS
                || record.resizing_to.is_some_and(|m| m == 0 || m > MAX_SHARDS)
            {
                return Err(bad(format!("shards must be 1 to {MAX_SHARDS}")));
            }
            Ok(Some(record))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let shards = (0..MAX_SHARDS)
                .take_while(|&i| shard_dir(data_dir, i).join("shard.sqlite").exists())
                .count();
            Ok(u16::try_from(shards)
                .ok()
                .filter(|&n| n > 0)
                .map(|shards| ClusterRecord {
                    shards,
                    epoch: 1,
                    resizing_to: None,
                }))
        }
        Err(e) => Err(e.into()),
    }
}

/// Writes `cluster.json` atomically (aside, synced, renamed over).
async fn save_record(data_dir: &Path, record: ClusterRecord) -> Result<(), DevError> {
    let dir = data_dir.to_path_buf();
    blocking(move || {
        use std::io::Write as _;
        let json = serde_json::to_vec_pretty(&record).map_err(std::io::Error::other)?;
        let aside = dir.join(format!("{CLUSTER_FILE}.tmp"));
        let mut f = std::fs::File::create(&aside)?;
        f.write_all(&json)?;
        f.sync_all()?;
        std::fs::rename(&aside, dir.join(CLUSTER_FILE))?;
        std::fs::File::open(&dir)?.sync_all()?;
        Ok::<_, DevError>(())
    })
    .await
}

/// What a start does with the recorded size and `--shards`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StartPlan {
    /// The size to start with (and a resize to resume, if one was cut short).
    record: ClusterRecord,
    /// A resize to run once started: `--shards` differs from the recorded size.
    then_resize_to: Option<u16>,
}

impl StartPlan {
    fn of(recorded: Option<ClusterRecord>, shards: Option<u16>) -> Self {
        match recorded {
            None => Self {
                record: ClusterRecord {
                    shards: shards.unwrap_or(1),
                    epoch: 1,
                    resizing_to: None,
                },
                then_resize_to: None,
            },
            Some(record) => {
                let size_after_resume = record.resizing_to.unwrap_or(record.shards);
                Self {
                    record,
                    then_resize_to: shards.filter(|&k| k != size_after_resume),
                }
            }
        }
    }
}

/// 32 random bytes as hex: the secret the shards of this run share on their peer ports, and
/// the control token.
fn random_hex() -> Result<String, DevError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(DevError::Random)?;
    Ok(hex::encode(bytes))
}

fn print_banner(launch: &Launch, shards: &[Shard], data_dir: &Path) {
    match shards {
        [one] => print_single_banner(launch, one, data_dir),
        _ => print_cluster_banner(launch, shards, data_dir),
    }
}

fn print_single_banner(launch: &Launch, shard: &Shard, _data_dir: &Path) {
    let p = shard.spec.ports;
    println!(
        "stead dev: running {title}
  sidecar  pid {sp}  ingress http://{ingress}  metrics http://{admin}/metrics  app API http://{api}
  app      pid {ap}  {bin} on {app}
  data     {data}
try:
{try_lines}
`stead scale --shards N` resizes it; Ctrl-C stops both.",
        title = launch.running.title(),
        try_lines = try_lines(&launch.running, &launch.app().classes, &local(p.ingress)),
        sp = shard.sidecar.pid(),
        ingress = local(p.ingress),
        admin = local(p.admin),
        api = local(p.api),
        ap = shard.app.pid(),
        bin = launch.app().program.display(),
        app = launch.app_addr(&shard.spec),
        data = shard.spec.data_dir.display(),
    );
}

fn print_cluster_banner(launch: &Launch, shards: &[Shard], data_dir: &Path) {
    println!(
        "stead dev: running {} on {} shards (ring epoch {}, a fresh peer token for this run)",
        launch.running.title(),
        shards.len(),
        launch.topology().epoch
    );
    for shard in shards {
        let p = shard.spec.ports;
        println!(
            "  shard {i}  ingress http://{ingress}  metrics http://{admin}/metrics  peer {peer}
           sidecar pid {sp}  app API http://{api}
           app     pid {ap}  on {app}
           data    {data}",
            i = shard.spec.ordinal,
            ingress = local(p.ingress),
            admin = local(p.admin),
            peer = local(p.peer),
            sp = shard.sidecar.pid(),
            api = local(p.api),
            ap = shard.app.pid(),
            app = launch.app_addr(&shard.spec),
            data = shard.spec.data_dir.display(),
        );
    }
    let first = shards[0].spec.ports.ingress;
    let last = shards[shards.len() - 1].spec.ports.ingress;
    println!(
        "  app      {bin}
  data     {data}
try (every shard's ingress reaches every object; others forward to the owner):
  curl -X POST http://{a}/objects/Counter/name/demo/increment
  curl http://{b}/objects/Counter/name/demo/value
  curl http://{a}/objects/Counter/name/demo/whoami
  curl http://{b}/objects/Counter/name/demo/whoami
`stead scale --shards N` resizes it; Ctrl-C stops every shard.",
        bin = launch.app().program.display(),
        data = data_dir.display(),
        a = local(first),
        b = local(last),
    );
}

/// A shard under supervision: how to stop it, and its supervisor.
struct Supervised {
    ordinal: u16,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// The running local cluster, as the control port and resizes see it.
struct Cluster {
    launch: Arc<Launch>,
    /// What `cluster.json` holds.
    record: Mutex<ClusterRecord>,
    /// In ordinal order.
    supervised: tokio::sync::Mutex<Vec<Supervised>>,
    progress: Mutex<ResizeProgress>,
    /// The resize running, if any (stopped first when `stead dev` stops; it resumes at the
    /// next start).
    resize_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    control_token: String,
}

impl Cluster {
    fn record(&self) -> ClusterRecord {
        *self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn set_record(&self, record: ClusterRecord) -> Result<(), DevError> {
        save_record(&self.launch.data_dir, record).await?;
        *self.record.lock().unwrap_or_else(|p| p.into_inner()) = record;
        Ok(())
    }

    fn progress(&self) -> ResizeProgress {
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn update_progress(&self, f: impl FnOnce(&mut ResizeProgress)) {
        f(&mut self.progress.lock().unwrap_or_else(|p| p.into_inner()));
    }

    async fn supervise(&self, shard: Shard) {
        let (stop, rx) = watch::channel(false);
        let ordinal = shard.spec.ordinal;
        let task = tokio::spawn(supervise(self.launch.clone(), shard, rx));
        self.supervised.lock().await.push(Supervised {
            ordinal,
            stop,
            task,
        });
    }

    async fn running(&self) -> u16 {
        u16::try_from(self.supervised.lock().await.len()).unwrap_or(MAX_SHARDS)
    }

    /// Stops (in order) the shards with an ordinal >= `from`.
    async fn stop_from(&self, from: u16) {
        let gone: Vec<Supervised> = {
            let mut all = self.supervised.lock().await;
            let keep = all.iter().take_while(|s| s.ordinal < from).count();
            all.split_off(keep)
        };
        for s in &gone {
            // The supervisor holds its receiver until it has stopped its shard.
            let _ = s.stop.send(true);
        }
        for s in gone {
            if let Err(e) = s.task.await {
                println!("stead dev: a shard supervisor failed: {e}");
            }
        }
    }

    /// Stops the running resize (recorded: the next start resumes it), then every shard.
    async fn stop_all(&self) {
        let resize = self
            .resize_task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = resize {
            task.abort();
            // Dropping the aborted task drops a shard it was starting, which kills its processes.
            let _ = task.await;
        }
        self.stop_from(0).await;
    }

    /// Begins a resize to `to` shards unless one runs; answers its progress.
    fn begin_resize(self: &Arc<Self>, to: u16) -> Result<ResizeProgress, ApiError> {
        if to == 0 || to > MAX_SHARDS {
            return Err(ApiError::bad_request(
                "invalid_shards",
                format!("a local cluster has 1 to {MAX_SHARDS} shards, not {to}"),
            ));
        }
        let record = self.record();
        let mut progress = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        if progress.state.is_running() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "resize_in_progress",
                format!(
                    "a resize from {} to {} shards is in progress; wait until it is done (`stead scale` returns then), then ask again",
                    progress.from, progress.to
                ),
            ));
        }
        let nothing_to_do = to == record.shards && record.resizing_to.is_none();
        *progress = ResizeProgress {
            id: progress.id + 1,
            state: if nothing_to_do {
                ResizeState::Done
            } else {
                ResizeState::Starting
            },
            from: record.shards,
            to,
            epoch: record.epoch,
            ..ResizeProgress::default()
        };
        let answer = progress.clone();
        drop(progress);
        if !nothing_to_do {
            let cluster = self.clone();
            let task = tokio::spawn(async move { cluster.resize(to).await });
            *self.resize_task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        }
        Ok(answer)
    }

    /// Begins a resize and waits for its end (used at start); `Err` when it failed.
    async fn resize_and_wait(self: &Arc<Self>, to: u16) -> Result<(), DevError> {
        let id = self
            .begin_resize(to)
            .map_err(|e| DevError::Reshard(e.message))?
            .id;
        loop {
            let p = self.progress();
            if p.id != id {
                return Ok(());
            }
            match p.state {
                ResizeState::Done => return Ok(()),
                ResizeState::Failed => {
                    return Err(DevError::Reshard(p.error.unwrap_or_default()));
                }
                _ => tokio::time::sleep(RESHARD_POLL).await,
            }
        }
    }

    /// Runs a resize begun by [`Self::begin_resize`] and records how it ended.
    async fn resize(self: Arc<Self>, to: u16) {
        let started = Instant::now();
        let result = self.resize_steps(to, started).await;
        self.update_progress(|p| {
            p.seconds = started.elapsed().as_secs_f64();
            match result {
                Ok(epoch) => {
                    p.state = ResizeState::Done;
                    p.epoch = epoch;
                }
                Err(e) => {
                    p.state = ResizeState::Failed;
                    p.error = Some(e.to_string());
                }
            }
        });
        let p = self.progress();
        match p.state {
            ResizeState::Done => println!("stead dev: {}", crate::scale::summary(&p)),
            _ => println!(
                "stead dev: the resize to {to} shards failed: {}; `stead scale --shards {to}` tries again",
                p.error.unwrap_or_default()
            ),
        }
    }

    fn set_state(&self, state: ResizeState, started: Instant) {
        self.update_progress(|p| {
            p.state = state;
            p.seconds = started.elapsed().as_secs_f64();
        });
        if let Some(line) = crate::scale::progress_line(&self.progress()) {
            println!("stead dev: {line}");
        }
    }

    /// Grow: start the new shards, then reshard. Shrink: reshard, then stop the shards that
    /// left. Returns the new ring epoch.
    async fn resize_steps(&self, to: u16, started: Instant) -> Result<u64, DevError> {
        let record = self.record();
        // Recorded first: a `stead dev` stopped in the middle resumes it at its next start.
        self.set_record(ClusterRecord {
            resizing_to: Some(to),
            ..record
        })
        .await?;
        let running = self.running().await;
        let launch = &self.launch;
        if to > running {
            self.set_state(ResizeState::Starting, started);
            // The joining shards start on the ring the cluster has now; they own nothing yet.
            let (ring_shards, epoch) = self
                .current_ring()
                .await
                .unwrap_or((record.shards, record.epoch));
            launch.update(|t| {
                t.ring_shards = ring_shards;
                t.epoch = t.epoch.max(epoch);
                t.peers = launch.peers(to);
            });
            let specs = (running..to)
                .map(|i| launch.spec(i))
                .collect::<Result<Vec<_>, _>>()?;
            check_ports_free(launch, &specs)?;
            for spec in specs {
                let shard = Shard::start(launch, spec).await?;
                println!(
                    "stead dev: started shard {} (sidecar pid {}, ingress http://{})",
                    shard.spec.ordinal,
                    shard.sidecar.pid(),
                    local(shard.spec.ports.ingress)
                );
                self.supervise(shard).await;
            }
        }
        self.set_state(ResizeState::Moving, started);
        let peers = launch.peers(running.max(to));
        // Every shard that hands slots over must reach the joining ones.
        for ordinal in 0..running.min(to) {
            self.tell_peers(ordinal, &peers).await;
        }
        let status = self.reshard(to, peers, started).await?;
        let epoch = status.epoch.max(record.epoch);
        launch.update(|t| {
            t.ring_shards = to;
            t.epoch = epoch;
        });
        if to < running {
            self.set_state(ResizeState::Stopping, started);
            self.stop_from(to).await;
        }
        launch.update(|t| t.peers = launch.peers(to));
        self.set_record(ClusterRecord {
            shards: to,
            epoch,
            resizing_to: None,
        })
        .await?;
        Ok(epoch)
    }

    /// Offers shard `ordinal` its current ring with the longer peer list `peers` (taken: same
    /// epoch, more peers). Best effort: a shard that is restarting gets them from its flags.
    async fn tell_peers(&self, ordinal: u16, peers: &[String]) {
        let Some(addr) = self.launch.peers(ordinal + 1).pop() else {
            return;
        };
        let token = (
            stead_core::protocol::PEER_TOKEN,
            self.launch.peer_token.as_str(),
        );
        let slots = format!("http://{addr}/v1/admin/slots");
        let ring = match json_call(Method::GET, &slots, token, None).await {
            Ok(a) if a.status.is_success() => a.body.get("ring").cloned(),
            _ => None,
        };
        let (Some(epoch), Some(shards)) = (
            ring.as_ref().and_then(|r| r.get("epoch")?.as_u64()),
            ring.as_ref().and_then(|r| r.get("shards")?.as_u64()),
        ) else {
            println!(
                "stead dev: shard {ordinal} did not say its ring; it learns the peers at its restart"
            );
            return;
        };
        let body = serde_json::json!({ "epoch": epoch, "shards": shards, "peers": peers });
        let url = format!("http://{addr}/v1/admin/ring");
        match json_call(Method::PUT, &url, token, Some(&body)).await {
            Ok(a) if a.status.is_success() => {}
            Ok(a) => println!(
                "stead dev: shard {ordinal} refused the peer list: {}",
                a.message()
            ),
            Err(e) => println!("stead dev: shard {ordinal} did not take the peer list: {e}"),
        }
    }

    fn shard0_peer(&self) -> String {
        self.launch.peers(1).pop().unwrap_or_default()
    }

    /// `(shards, epoch)` of the ring shard 0 serves.
    async fn current_ring(&self) -> Option<(u16, u64)> {
        let url = format!("http://{}/v1/admin/slots", self.shard0_peer());
        let token = (
            stead_core::protocol::PEER_TOKEN,
            self.launch.peer_token.as_str(),
        );
        let answer = json_call(Method::GET, &url, token, None).await.ok()?;
        let ring = answer.body.get("ring")?;
        let shards = u16::try_from(ring.get("shards")?.as_u64()?).ok()?;
        Some((shards, ring.get("epoch")?.as_u64()?))
    }

    /// Asks shard 0 to reshard to `to` shards and follows it to the end; asks again when shard
    /// 0 restarted and forgot it (the reshard resumes from what the shards own).
    async fn reshard(
        &self,
        to: u16,
        peers: Vec<String>,
        started: Instant,
    ) -> Result<ReshardStatus, DevError> {
        let url = format!("http://{}/v1/admin/reshard", self.shard0_peer());
        let token = (
            stead_core::protocol::PEER_TOKEN,
            self.launch.peer_token.as_str(),
        );
        let body = serde_json::json!({ "shards": to, "peers": peers });
        let mut last_answer = Instant::now();
        let mut ask = true;
        let mut last_print = None::<Instant>;
        loop {
            let answer = if ask {
                json_call(Method::POST, &url, token, Some(&body)).await
            } else {
                json_call(Method::GET, &url, token, None).await
            };
            let answer = match answer {
                Ok(a) => a,
                Err(e) => {
                    if last_answer.elapsed() > SHARD0_PATIENCE {
                        return Err(DevError::Reshard(format!(
                            "shard 0's peer port has not answered for {} s: {e}",
                            SHARD0_PATIENCE.as_secs()
                        )));
                    }
                    tokio::time::sleep(RESHARD_POLL).await;
                    continue;
                }
            };
            last_answer = Instant::now();
            if !answer.status.is_success() {
                return Err(DevError::Reshard(format!(
                    "{} ({})",
                    answer.message(),
                    answer.code().unwrap_or("no code")
                )));
            }
            let status: ReshardStatus = serde_json::from_value(answer.body)
                .map_err(|e| DevError::Reshard(format!("unexpected answer of shard 0: {e}")))?;
            let ours = status.to == to;
            if ours {
                self.update_progress(|p| {
                    p.moved = status.moved;
                    p.total = status.total;
                    p.objects = status.objects;
                    p.bytes = status.bytes;
                    p.seconds = started.elapsed().as_secs_f64();
                });
            }
            match status.state.as_str() {
                "done" if ours => return Ok(status),
                "failed" if ours => {
                    return Err(DevError::Reshard(
                        status.error.unwrap_or_else(|| "no reason given".into()),
                    ));
                }
                "running" if ours => {
                    ask = false;
                    if last_print.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        last_print = Some(Instant::now());
                        println!("stead dev: moved {}/{} slots", status.moved, status.total);
                    }
                }
                // `idle`: shard 0 restarted and forgot it; or the end of an earlier reshard.
                _ => ask = true,
            }
            tokio::time::sleep(RESHARD_POLL).await;
        }
    }
}

/// `GET /v1/admin/reshard` of shard 0 (the contract of issue 9).
#[derive(Debug, Clone, Deserialize)]
struct ReshardStatus {
    state: String,
    #[serde(default)]
    to: u16,
    #[serde(default)]
    epoch: u64,
    #[serde(default)]
    moved: u64,
    #[serde(default)]
    total: u64,
    #[serde(default)]
    objects: u64,
    #[serde(default)]
    bytes: u64,
    #[serde(default)]
    error: Option<String>,
}

/// Opens the control port on loopback and writes [`CONTROL_FILE`]; the task serves it.
async fn start_control(cluster: &Arc<Cluster>) -> Result<tokio::task::JoinHandle<()>, DevError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let file = ControlFile {
        addr: addr.to_string(),
        token: cluster.control_token.clone(),
        pid: std::process::id(),
    };
    let path = cluster.launch.data_dir.join(CONTROL_FILE);
    blocking(move || {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        // Created afresh, so that its mode is 0600 whatever an old one had.
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = std::fs::File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(&serde_json::to_vec(&file).map_err(std::io::Error::other)?)?;
        f.sync_all()
    })
    .await?;
    let router = Router::new()
        .route(
            RESIZE_PATH,
            axum::routing::get(get_resize).post(post_resize),
        )
        .with_state(cluster.clone());
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            println!("stead dev: the control port failed: {e}");
        }
    }))
}

fn authorized(cluster: &Cluster, headers: &HeaderMap) -> Result<(), ApiError> {
    use subtle::ConstantTimeEq as _;
    let given = headers
        .get(CONTROL_TOKEN)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if bool::from(given.ct_eq(cluster.control_token.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            format!(
                "the control port needs the token of {CONTROL_FILE} in the {CONTROL_TOKEN} header"
            ),
        ))
    }
}

async fn get_resize(State(cluster): State<Arc<Cluster>>, headers: HeaderMap) -> Response {
    match authorized(&cluster, &headers) {
        Ok(()) => axum::Json(cluster.progress()).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct ResizeRequest {
    shards: u16,
}

async fn post_resize(
    State(cluster): State<Arc<Cluster>>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Response {
    let answer = authorized(&cluster, &headers).and_then(|()| {
        let req: ResizeRequest = serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                "bad_request",
                format!("the body must be {{\"shards\": N}}: {e}"),
            )
        })?;
        cluster.begin_resize(req.shards)
    });
    match answer {
        Ok(progress) => (StatusCode::ACCEPTED, axum::Json(progress)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Restarts the shard's sidecar or app whenever it exits, and both at each reload, until
/// `stop` turns true; then stops the shard.
async fn supervise(launch: Arc<Launch>, mut shard: Shard, mut stop: watch::Receiver<bool>) {
    let mut reloads = launch.reloads.subscribe();
    loop {
        let exited = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            changed = reloads.changed() => changed.is_ok().then_some(None),
            s = shard.sidecar.child.wait() => Some(Some((Role::Sidecar, describe(s)))),
            s = shard.app.child.wait() => Some(Some((Role::App, describe(s)))),
        };
        let (role, status) = match exited {
            Some(Some(exit)) => exit,
            Some(None) => {
                shard.reload(&launch).await;
                continue;
            }
            // The reload sender lives in `launch`, which this task holds: not reached.
            None => continue,
        };
        let label = shard_label(&launch, &shard.spec, role);
        let wait = shard.proc_mut(role).next_backoff();
        println!(
            "stead dev: {label} exited ({status}); restarting it in {} ms",
            wait.as_millis()
        );
        let stopping = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => true,
            _ = tokio::time::sleep(wait) => false,
        };
        if stopping {
            break;
        }
        let spec = shard.spec.clone();
        let proc = shard.proc_mut(role);
        match proc.respawn(&launch, &spec).await {
            Ok(()) => println!("stead dev: restarted {label} (pid {})", proc.pid()),
            // The exited child stays in place: its wait() returns at once, so the next round
            // of the loop tries again after a longer backoff.
            Err(e) => println!("stead dev: cannot restart {label}: {e}"),
        }
    }
    shard.stop(&launch).await;
}

/// A watched path as the messages show it: relative to the project's folder.
fn shown_in(dir: &Path, path: &Path) -> String {
    path.strip_prefix(dir).unwrap_or(path).display().to_string()
}

/// Watches a project's files; after a change, prepares the project again (describes or
/// rebuilds it) and reloads every shard, or, when that fails, says why and keeps the running
/// version until the next change.
async fn watch_project(
    launch: Arc<Launch>,
    project: Project,
    mut paths: Vec<PathBuf>,
    skip: Vec<PathBuf>,
) {
    let snapshot = |paths: Vec<PathBuf>, skip: Vec<PathBuf>| async move {
        tokio::task::spawn_blocking(move || crate::watch::Snapshot::take(&paths, &skip))
            .await
            .unwrap_or_default()
    };
    let mut base = snapshot(paths.clone(), skip.clone()).await;
    let shown: Vec<String> = paths
        .iter()
        .filter(|p| p.exists())
        .map(|p| shown_in(project.dir(), p))
        .collect();
    println!(
        "stead dev: watching {} ({} files, read every {} ms); a change reloads the app",
        shown.join(", "),
        base.len(),
        crate::watch::POLL_EVERY.as_millis()
    );
    if base.truncated {
        println!(
            "stead dev: the project has more than {} files to watch; only the first are watched",
            crate::watch::MAX_FILES
        );
    }
    loop {
        let (now, changed) = crate::watch::next_change(&paths, &skip, &base).await;
        base = now;
        let names: Vec<String> = changed
            .iter()
            .take(3)
            .map(|p| shown_in(project.dir(), p))
            .collect();
        let more = changed.len().saturating_sub(names.len());
        println!(
            "stead dev: {}{} changed; reloading",
            names.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        );
        match project.prepare().await {
            Ok(prepared) => {
                if prepared.watch != paths {
                    paths = prepared.watch.clone();
                    base = snapshot(paths.clone(), skip.clone()).await;
                }
                launch.set_app(AppLaunch::of_project(&prepared));
                launch.reloads.send_modify(|n| *n += 1);
            }
            Err(e) => {
                println!("stead dev: {e}; still running the previous version until the next change")
            }
        }
    }
}

fn describe(s: std::io::Result<std::process::ExitStatus>) -> String {
    match s {
        Ok(st) => st.to_string(),
        Err(e) => e.to_string(),
    }
}

/// SIGTERM, then up to 10 s to finish, then SIGKILL.
async fn stop(child: &mut Child, what: &str) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        println!("stead dev: {what} did not stop within 10 s; killing it");
        if let Err(e) = child.kill().await {
            println!("stead dev: cannot kill {what}: {e}");
        }
    }
}

async fn wait_listening(child: &mut Child, what: &str, addr: &str) -> Result<(), DevError> {
    for _ in 0..300 {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(DevError::Exited {
                what: what.into(),
                status: status.to_string(),
            });
        }
        let up = match addr.strip_prefix(crate::app::UNIX_PREFIX) {
            Some(path) => tokio::net::UnixStream::connect(path).await.is_ok(),
            None => tokio::net::TcpStream::connect(addr).await.is_ok(),
        };
        if up {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(DevError::NotReady {
        what: what.into(),
        addr: addr.into(),
    })
}

/// The example's binary next to this one; in a source checkout, built first if missing.
async fn find_or_build_app(exe: &Path, example: &str) -> Result<PathBuf, DevError> {
    let dir = exe.parent().unwrap_or(Path::new("."));
    let candidate = dir.join(example);
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    if manifest.exists() {
        // In a checkout, (re)build so the app matches the source; cargo makes this a no-op when
        // nothing changed.
        let release = dir.file_name().is_some_and(|n| n == "release");
        println!("stead dev: building the {example} app (cargo build -p {example})");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.arg("build")
            .arg("-p")
            .arg(example)
            .arg("--manifest-path")
            .arg(&manifest);
        if release {
            cmd.arg("--release");
        }
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| DevError::Build {
                example: example.into(),
                detail: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(DevError::Build {
                example: example.into(),
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
    }
    if candidate.exists() {
        return Ok(candidate);
    }
    Err(DevError::NoApp {
        example: example.into(),
        exe: exe.display().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shard_keeps_the_historical_ports() {
        let p = ShardPorts::of(8787, 0).expect("in range");
        assert_eq!((p.ingress, p.api, p.admin, p.app), (8787, 9787, 9788, 9789));
        assert_eq!(p.peer, 9790);
    }

    #[test]
    fn no_two_ports_of_the_largest_cluster_collide() {
        let mut all = std::collections::HashSet::new();
        for i in 0..MAX_SHARDS {
            let p = ShardPorts::of(8787, i).expect("in range");
            for port in [p.ingress, p.api, p.admin, p.app, p.peer, p.app_alt] {
                assert!(all.insert(port), "port {port} used twice");
            }
        }
    }

    #[test]
    fn a_data_folder_in_use_is_refused_until_released() {
        let dir = std::env::temp_dir().join(format!("stead-dev-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = lock_data_dir(&dir).unwrap();
        let err = lock_data_dir(&dir).unwrap_err();
        assert!(matches!(err, DevError::DataDirInUse { .. }), "{err}");
        assert!(err.to_string().contains("another `stead dev` is running"));
        drop(first);
        drop(lock_data_dir(&dir).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_taken_port_is_refused_with_its_role() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let launch = Launch {
            exe: PathBuf::new(),
            app: Mutex::new(AppLaunch::of_example("counter", PathBuf::new())),
            app_transport: AppTransport::Tcp,
            running: Running::Example("counter".into()),
            reloads: watch::channel(0).0,
            sidecar_args: vec![],
            base_port: 8787,
            data_dir: PathBuf::new(),
            topology: Mutex::new(Topology {
                ring_shards: 1,
                epoch: 1,
                peers: vec![local(9790)],
            }),
            peer_token: String::new(),
        };
        // Port 0 always binds: only the app port is taken.
        let spec = ShardSpec {
            ordinal: 0,
            ports: ShardPorts {
                ingress: 0,
                api: 0,
                admin: 0,
                app: port,
                peer: 0,
                app_alt: 0,
            },
            data_dir: PathBuf::new(),
            alt_app: false,
        };
        let err = check_ports_free(&launch, std::slice::from_ref(&spec)).unwrap_err();
        assert!(
            matches!(&err, DevError::PortInUse { port: p, what } if *p == port && what == "the app"),
            "{err}"
        );
        drop(taken);
        check_ports_free(&launch, &[spec]).unwrap();
    }

    #[test]
    fn a_reload_starts_the_new_app_on_the_address_the_running_one_does_not_use() {
        let launch = |running: Running, transport| Launch {
            exe: PathBuf::new(),
            app: Mutex::new(AppLaunch::of_example("counter", PathBuf::new())),
            app_transport: transport,
            running,
            reloads: watch::channel(0).0,
            sidecar_args: vec![],
            base_port: 8787,
            data_dir: PathBuf::from("/d"),
            topology: Mutex::new(Topology {
                ring_shards: 1,
                epoch: 1,
                peers: vec![],
            }),
            peer_token: String::new(),
        };
        let project = Running::Project(Project::Cargo {
            dir: PathBuf::from("/p"),
            manifest: PathBuf::from("/p/stead.yaml"),
        });
        let unix = launch(project.clone(), AppTransport::Unix);
        let first = unix.spec(1).unwrap();
        let next = ShardSpec {
            alt_app: !first.alt_app,
            ..first.clone()
        };
        assert_eq!(unix.app_addr(&first), "unix:/d/shard-1/app.sock");
        assert_eq!(unix.app_addr(&next), "unix:/d/shard-1/app-2.sock");
        // On sockets, no second port is needed.
        assert_eq!(unix.alt_app_port(&first), None);

        let tcp = launch(project, AppTransport::Tcp);
        assert_eq!(tcp.app_addr(&first), "127.0.0.1:9799");
        assert_eq!(tcp.app_addr(&next), "127.0.0.1:9801");
        assert_eq!(tcp.alt_app_port(&first), Some(9801));
        // An example never reloads: its cluster does not claim the port.
        let example = launch(Running::Example("counter".into()), AppTransport::Tcp);
        assert_eq!(example.alt_app_port(&first), None);
    }

    #[test]
    fn a_described_workers_project_becomes_the_sidecar_classes_and_the_app_command() {
        let line = r#"{"config":"/p/wrangler.toml","main":"/p/src/index.ts","classes":["Counter","Room"],"bindings":{"COUNTER":"Counter","ROOM":"Room"},"vars":{},"watch":["/p/src","/p/wrangler.toml"]}"#;
        let prepared = crate::project::workers_app(
            PathBuf::from("node"),
            Path::new("/sdk"),
            Path::new("/p"),
            crate::project::Description::parse(line).unwrap(),
        )
        .unwrap();
        let launch = Launch {
            exe: PathBuf::from("/bin/stead"),
            app: Mutex::new(AppLaunch::of_project(&prepared)),
            app_transport: AppTransport::Unix,
            running: Running::Project(Project::Workers {
                dir: PathBuf::from("/p"),
                config: PathBuf::from("/p/wrangler.toml"),
            }),
            reloads: watch::channel(0).0,
            sidecar_args: vec![],
            base_port: 8787,
            data_dir: PathBuf::from("/p/.stead/dev"),
            topology: Mutex::new(Topology {
                ring_shards: 1,
                epoch: 1,
                peers: vec![local(9790)],
            }),
            peer_token: String::new(),
        };
        let spec = launch.spec(0).unwrap();
        let words = |cmd: &Command| {
            cmd.as_std()
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let sidecar = launch.sidecar_command(&spec);
        assert!(
            words(&sidecar).contains("--classes Counter,Room"),
            "{}",
            words(&sidecar)
        );
        assert!(
            words(&sidecar).contains("--app unix:/p/.stead/dev/shard-0/app.sock"),
            "{}",
            words(&sidecar)
        );
        let app = launch.app_command(&spec);
        let std = app.as_std();
        assert_eq!(std.get_program(), "node");
        assert_eq!(
            words(&app),
            "/sdk/bin/stead-workers.mjs serve --config /p/wrangler.toml"
        );
        assert_eq!(std.get_current_dir(), Some(Path::new("/p")));
        let env = |name: &str| {
            std.get_envs()
                .find(|(k, _)| *k == name)
                .and_then(|(_, v)| v.map(|v| v.to_string_lossy().into_owned()))
        };
        assert_eq!(
            env("STEAD_APP_ADDR").as_deref(),
            Some("unix:/p/.stead/dev/shard-0/app.sock")
        );
        assert_eq!(
            env("STEAD_API_URL").as_deref(),
            Some("http://127.0.0.1:9787")
        );
    }

    #[test]
    fn ports_past_65535_are_refused() {
        assert_eq!(ShardPorts::of(65_000, 0), None);
        assert!(ShardPorts::of(60_000, 2).is_some());
    }

    fn scratch(what: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("stead-dev-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_one_shard_folder_of_an_earlier_version_moves_into_shard_0() {
        let dir = scratch("adopt");
        std::fs::write(dir.join("shard.sqlite"), b"index").unwrap();
        std::fs::write(dir.join("shard.sqlite-wal"), b"wal").unwrap();
        std::fs::create_dir_all(dir.join("slots/12/Counter")).unwrap();
        std::fs::write(dir.join("slots/12/Counter/abc.sqlite"), b"object").unwrap();

        assert!(adopt_single_layout(&dir).unwrap());
        let shard0 = dir.join("shard-0");
        assert_eq!(
            std::fs::read(shard0.join("shard.sqlite")).unwrap(),
            b"index"
        );
        assert_eq!(
            std::fs::read(shard0.join("shard.sqlite-wal")).unwrap(),
            b"wal"
        );
        assert_eq!(
            std::fs::read(shard0.join("slots/12/Counter/abc.sqlite")).unwrap(),
            b"object"
        );
        assert!(!dir.join("shard.sqlite").exists() && !dir.join("slots").exists());
        // Once only: the next start finds nothing to move, and infers one shard.
        assert!(!adopt_single_layout(&dir).unwrap());
        assert_eq!(
            read_record(&dir).unwrap(),
            Some(ClusterRecord {
                shards: 1,
                epoch: 1,
                resizing_to: None
            })
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_move_cut_short_finishes_and_a_double_layout_is_refused() {
        let dir = scratch("adopt-half");
        // As if a start died after moving `slots` but before `shard.sqlite`.
        std::fs::create_dir_all(dir.join("shard-0/slots")).unwrap();
        std::fs::write(dir.join("shard.sqlite"), b"index").unwrap();
        assert!(adopt_single_layout(&dir).unwrap());
        assert!(dir.join("shard-0/shard.sqlite").exists());

        // The same entry on both sides: which one is right is not ours to guess.
        std::fs::write(dir.join("shard.sqlite"), b"other").unwrap();
        let err = adopt_single_layout(&dir).unwrap_err();
        assert!(
            matches!(&err, DevError::LayoutConflict { entry, .. } if entry == "shard.sqlite"),
            "{err}"
        );
        assert_eq!(std::fs::read(dir.join("shard.sqlite")).unwrap(), b"other");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_size_comes_from_cluster_json_else_from_the_shard_folders() {
        let dir = scratch("record");
        assert_eq!(read_record(&dir).unwrap(), None);
        for i in 0..3 {
            std::fs::create_dir_all(shard_dir(&dir, i)).unwrap();
            std::fs::write(shard_dir(&dir, i).join("shard.sqlite"), b"").unwrap();
        }
        assert_eq!(read_record(&dir).unwrap().map(|r| r.shards), Some(3));

        let record = ClusterRecord {
            shards: 2,
            epoch: 7,
            resizing_to: Some(5),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(save_record(&dir, record)).unwrap();
        assert_eq!(read_record(&dir).unwrap(), Some(record));
        assert_eq!(record.running(), 5);

        std::fs::write(dir.join(CLUSTER_FILE), br#"{"shards":0,"epoch":1}"#).unwrap();
        let err = read_record(&dir).unwrap_err();
        assert!(err.to_string().contains("shards must be 1 to 64"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_different_shards_flag_starts_the_recorded_size_then_reshards() {
        let three = ClusterRecord {
            shards: 3,
            epoch: 4,
            resizing_to: None,
        };
        let plan = StartPlan::of(Some(three), Some(5));
        assert_eq!((plan.record, plan.then_resize_to), (three, Some(5)));
        // No flag, or the same size: the recorded size, nothing else.
        assert_eq!(StartPlan::of(Some(three), None).then_resize_to, None);
        assert_eq!(StartPlan::of(Some(three), Some(3)).then_resize_to, None);
        // A fresh folder starts at the flag's size.
        let fresh = StartPlan::of(None, Some(2));
        assert_eq!((fresh.record.shards, fresh.record.epoch), (2, 1));
        assert_eq!(fresh.then_resize_to, None);
        assert_eq!(StartPlan::of(None, None).record.shards, 1);
        // A resize cut short is resumed; --shards equal to its target adds nothing.
        let cut = ClusterRecord {
            resizing_to: Some(5),
            ..three
        };
        assert_eq!(StartPlan::of(Some(cut), Some(5)).then_resize_to, None);
        assert_eq!(StartPlan::of(Some(cut), Some(3)).then_resize_to, Some(3));
    }

    #[test]
    fn every_sidecar_gets_the_ring_the_peers_and_its_ordinal() {
        let launch = Launch {
            exe: PathBuf::from("/bin/stead"),
            app: Mutex::new(AppLaunch::of_example("counter", PathBuf::new())),
            app_transport: AppTransport::Tcp,
            running: Running::Example("counter".into()),
            reloads: watch::channel(0).0,
            sidecar_args: vec![],
            base_port: 8787,
            data_dir: PathBuf::from("/data"),
            topology: Mutex::new(Topology {
                ring_shards: 1,
                epoch: 1,
                peers: vec![],
            }),
            peer_token: "secret".into(),
        };
        launch.update(|t| t.peers = launch.peers(1));
        let args = |launch: &Launch, i| {
            let cmd = launch.sidecar_command(&launch.spec(i).unwrap());
            let std = cmd.as_std();
            let token = std
                .get_envs()
                .find(|(k, _)| *k == "STEAD_PEER_TOKEN")
                .and_then(|(_, v)| v.map(|v| v.to_string_lossy().into_owned()));
            let args: Vec<String> = std
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            (args.join(" "), token)
        };
        let (one, token) = args(&launch, 0);
        assert_eq!(token.as_deref(), Some("secret"), "also with one shard");
        assert!(
            one.contains("--shard-ordinal 0 --peers 127.0.0.1:9790 --ring-shards 1 --ring-epoch 1"),
            "{one}"
        );
        assert!(one.contains("--data-dir /data/shard-0"), "{one}");
        // A restart after a resize gets the new ring.
        launch.update(|t| {
            t.ring_shards = 3;
            t.epoch = 2;
            t.peers = launch.peers(3);
        });
        let (two, _) = args(&launch, 2);
        assert!(
            two.contains("--shard-ordinal 2 --peers 127.0.0.1:9790,127.0.0.1:9800,127.0.0.1:9810 --ring-shards 3 --ring-epoch 2"),
            "{two}"
        );
        assert!(two.contains("--data-dir /data/shard-2"), "{two}");
    }
}
