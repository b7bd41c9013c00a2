//! `stead dev`: the local mode. Runs one or more shards on loopback, each a sidecar and an
//! example app as child processes with its own data folder; restarts a process that exits, and
//! stops everything cleanly on Ctrl-C or SIGTERM.
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
//!
//! Ingress ports stay below `p + 1000` because `--shards` is at most [`MAX_SHARDS`], and each
//! shard's other ports sit in their own block of ten, so no two ports of a cluster collide.
//!
//! The children die with `stead dev`, even with `kill -9` (a parent-death signal), and a second
//! `stead dev` refuses to start on a data folder that one already uses (a lock file) or on a port
//! that something already holds, instead of talking to whatever listens there.

use std::io::IsTerminal as _;
use std::os::fd::AsRawFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};

/// Most shards `stead dev` runs (keeps every ingress port below the other ports).
pub const MAX_SHARDS: u16 = 64;

/// Sidecar environment variables that `stead dev` sets itself, so none leaks in from the shell.
const PEER_ENV: [&str; 4] = [
    "STEAD_SHARD_ORDINAL",
    "STEAD_PEERS",
    "STEAD_PEER_ADDR",
    "STEAD_PEER_TOKEN",
];

/// A restarted process that lived shorter than this waits longer before its next restart.
const STABLE_AFTER: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long a process gets to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// In the data folder: held locked (`flock`) by the `stead dev` that uses the folder.
pub const LOCK_FILE: &str = ".stead-dev.lock";

#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Example app to run: `life` (multiplayer Game of Life), `chat` or `counter`.
    #[arg(long, default_value = "life", value_parser = ["life", "chat", "counter"])]
    pub example: String,
    /// Port of shard 0's ingress on 127.0.0.1; shard i's ingress is port+i. Shard i's app API,
    /// admin, app and peer ports are port+1000+10*i, +1001, +1002 and +1003.
    #[arg(long, default_value_t = 8787)]
    pub port: u16,
    /// Shards to run, each a sidecar and an app, with a static ring over all of them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_SHARDS)))]
    pub shards: u16,
    /// Folder for the objects' data (with several shards, shard i uses `{data-dir}/shard-{i}`).
    #[arg(long, default_value = ".stead/dev")]
    pub data_dir: PathBuf,
    /// The app binary to run instead of the example's.
    #[arg(long)]
    pub app_bin: Option<PathBuf>,
    /// Extra flags for every sidecar, e.g. `--sidecar-arg=--idle-timeout=2s`.
    #[arg(long = "sidecar-arg", allow_hyphen_values = true)]
    pub sidecar_args: Vec<String>,
}

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
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The classes each example app serves.
fn classes_of(example: &str) -> &'static str {
    match example {
        "life" => "Lobby,GameRoom",
        "chat" => "ChatRoom",
        _ => "Counter",
    }
}

/// What to try first with each example, given the ingress address.
fn try_lines(example: &str, ingress: &str) -> String {
    match example {
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
}

/// What every shard is started with.
#[derive(Debug)]
struct Launch {
    exe: PathBuf,
    app_bin: PathBuf,
    example: String,
    sidecar_args: Vec<String>,
    /// The peer address of every shard in ordinal order; empty with one shard.
    peers: Vec<String>,
    /// The shared peer secret of this run; `None` with one shard.
    peer_token: Option<String>,
}

impl Launch {
    fn several(&self) -> bool {
        self.peers.len() > 1
    }

    fn app_command(&self, spec: &ShardSpec) -> Command {
        let mut cmd = Command::new(&self.app_bin);
        cmd.env(stead_core::protocol::ENV_APP_ADDR, local(spec.ports.app))
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
            .args(["--app", &local(p.app)])
            .args(["--peer-addr", &local(p.peer)])
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .args(["--classes", classes_of(&self.example)]);
        for var in PEER_ENV {
            cmd.env_remove(var);
        }
        if self.several() {
            cmd.args(["--shard-ordinal", &spec.ordinal.to_string()])
                .args(["--peers", &self.peers.join(",")]);
        }
        if let Some(token) = &self.peer_token {
            // In the environment, not on the command line, where `ps` would show it.
            cmd.env("STEAD_PEER_TOKEN", token);
        }
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
                    Role::App => launch.app_bin.display().to_string(),
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
        ] {
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
        let mut app = Proc::spawn(launch, &spec, Role::App).await?;
        let mut sidecar = Proc::spawn(launch, &spec, Role::Sidecar).await?;
        let what = |role: Role| shard_label(launch, &spec, role);
        wait_listening(&mut app.child, &what(Role::App), &local(spec.ports.app)).await?;
        // The admin port, not the ingress: something else may already hold the ingress port,
        // and then the sidecar exits instead of listening.
        wait_listening(
            &mut sidecar.child,
            &what(Role::Sidecar),
            &local(spec.ports.admin),
        )
        .await?;
        Ok(Self { spec, sidecar, app })
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

pub async fn run(args: DevArgs) -> Result<(), DevError> {
    let exe = std::env::current_exe()?;
    let app_bin = match &args.app_bin {
        Some(p) => p.clone(),
        None => find_or_build_app(&exe, &args.example).await?,
    };
    std::fs::create_dir_all(&args.data_dir)?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    // Held until `stead dev` ends.
    let _lock = lock_data_dir(&data_dir)?;
    let specs = shard_specs(&args, &data_dir)?;
    let several = specs.len() > 1;
    let launch = Arc::new(Launch {
        exe,
        app_bin,
        example: args.example.clone(),
        sidecar_args: args.sidecar_args.clone(),
        peers: if several {
            specs.iter().map(|s| local(s.ports.peer)).collect()
        } else {
            vec![]
        },
        peer_token: if several { Some(peer_token()?) } else { None },
    });

    check_ports_free(&launch, &specs)?;
    let mut shards = Vec::with_capacity(specs.len());
    for spec in specs {
        // On an error, the shards started so far are dropped, which kills their processes.
        shards.push(Shard::start(&launch, spec).await?);
    }
    print_banner(&launch, &shards, &data_dir);

    let (stop_tx, stop_rx) = watch::channel(false);
    let tasks: Vec<_> = shards
        .into_iter()
        .map(|shard| tokio::spawn(supervise(launch.clone(), shard, stop_rx.clone())))
        .collect();
    crate::sidecar::shutdown_signal().await;
    println!("stead dev: stopping; shutting down");
    // Every task holds a receiver until it has stopped its shard, so this cannot fail.
    let _ = stop_tx.send(true);
    for task in tasks {
        if let Err(e) = task.await {
            println!("stead dev: a shard supervisor failed: {e}");
        }
    }
    println!("stead dev: stopped");
    Ok(())
}

fn shard_specs(args: &DevArgs, data_dir: &Path) -> Result<Vec<ShardSpec>, DevError> {
    let several = args.shards > 1;
    (0..args.shards)
        .map(|ordinal| {
            let ports = ShardPorts::of(args.port, ordinal).ok_or(DevError::PortRange {
                port: args.port,
                shards: args.shards,
            })?;
            let data_dir = if several {
                data_dir.join(format!("shard-{ordinal}"))
            } else {
                data_dir.to_path_buf()
            };
            Ok(ShardSpec {
                ordinal,
                ports,
                data_dir,
            })
        })
        .collect()
}

/// 32 random bytes as hex: the secret the shards of this run share on their peer ports.
fn peer_token() -> Result<String, DevError> {
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

fn print_single_banner(launch: &Launch, shard: &Shard, data_dir: &Path) {
    let p = shard.spec.ports;
    println!(
        "stead dev: running the {example} example
  sidecar  pid {sp}  ingress http://{ingress}  metrics http://{admin}/metrics  app API http://{api}
  app      pid {ap}  {bin} on {app}
  data     {data}
try:
{try_lines}
Ctrl-C stops both.",
        example = launch.example,
        try_lines = try_lines(&launch.example, &local(p.ingress)),
        sp = shard.sidecar.pid(),
        ingress = local(p.ingress),
        admin = local(p.admin),
        api = local(p.api),
        ap = shard.app.pid(),
        bin = launch.app_bin.display(),
        app = local(p.app),
        data = data_dir.display(),
    );
}

fn print_cluster_banner(launch: &Launch, shards: &[Shard], data_dir: &Path) {
    println!(
        "stead dev: running the {} example on {} shards (static ring, a fresh peer token for this run)",
        launch.example,
        shards.len()
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
            app = local(p.app),
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
Ctrl-C stops every shard.",
        bin = launch.app_bin.display(),
        data = data_dir.display(),
        a = local(first),
        b = local(last),
    );
}

/// Restarts the shard's sidecar or app whenever it exits, until `stop` turns true; then stops
/// the shard.
async fn supervise(launch: Arc<Launch>, mut shard: Shard, mut stop: watch::Receiver<bool>) {
    loop {
        let (role, status) = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            s = shard.sidecar.child.wait() => (Role::Sidecar, describe(s)),
            s = shard.app.child.wait() => (Role::App, describe(s)),
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
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
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
            for port in [p.ingress, p.api, p.admin, p.app, p.peer] {
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
            app_bin: PathBuf::new(),
            example: "counter".into(),
            sidecar_args: vec![],
            peers: vec![],
            peer_token: None,
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
            },
            data_dir: PathBuf::new(),
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
    fn ports_past_65535_are_refused() {
        assert_eq!(ShardPorts::of(65_000, 0), None);
        assert!(ShardPorts::of(60_000, 2).is_some());
    }
}
