//! `stead dev`: the local mode. Runs a sidecar and an example app as child processes on loopback,
//! with data in a local folder, and stops both cleanly on Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Example app to run.
    #[arg(long, default_value = "counter", value_parser = ["counter"])]
    pub example: String,
    /// Port of the ingress on 127.0.0.1; the app API, admin and app ports follow it
    /// (+1000, +1001, +1002).
    #[arg(long, default_value_t = 8787)]
    pub port: u16,
    /// Folder for the objects' data.
    #[arg(long, default_value = ".stead/dev")]
    pub data_dir: PathBuf,
    /// The app binary to run instead of the example's.
    #[arg(long)]
    pub app_bin: Option<PathBuf>,
    /// Extra flags for the sidecar, e.g. `--sidecar-arg=--idle-timeout=2s`.
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
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The classes each example app serves.
fn classes_of(example: &str) -> &'static str {
    if example == "counter" { "Counter" } else { "" }
}

pub async fn run(args: DevArgs) -> Result<(), DevError> {
    let exe = std::env::current_exe()?;
    let app_bin = match &args.app_bin {
        Some(p) => p.clone(),
        None => find_or_build_app(&exe, &args.example).await?,
    };
    std::fs::create_dir_all(&args.data_dir)?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    let ingress = format!("127.0.0.1:{}", args.port);
    let api = format!("127.0.0.1:{}", args.port.saturating_add(1000));
    let admin = format!("127.0.0.1:{}", args.port.saturating_add(1001));
    let app = format!("127.0.0.1:{}", args.port.saturating_add(1002));

    let mut app_child = Command::new(&app_bin)
        .env(stead_core::protocol::ENV_APP_ADDR, &app)
        .env(stead_core::protocol::ENV_API_URL, format!("http://{api}"))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| DevError::Spawn {
            what: app_bin.display().to_string(),
            source,
        })?;
    let mut sidecar = Command::new(&exe)
        .arg("sidecar")
        .args([
            "--ingress",
            &ingress,
            "--api",
            &api,
            "--admin",
            &admin,
            "--app",
            &app,
        ])
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--classes", classes_of(&args.example)])
        .args(&args.sidecar_args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| DevError::Spawn {
            what: "the sidecar".into(),
            source,
        })?;

    wait_listening(&mut app_child, "the app", &app).await?;
    // The admin port, not the ingress: something else may already hold the ingress port, and
    // then the sidecar exits instead of listening.
    wait_listening(&mut sidecar, "the sidecar", &admin).await?;
    println!(
        "stead dev: running the {example} example
  sidecar  pid {sp}  ingress http://{ingress}  metrics http://{admin}/metrics  app API http://{api}
  app      pid {ap}  {bin} on {app}
  data     {data}
try:
  curl -X POST http://{ingress}/objects/Counter/name/demo/increment
  curl http://{ingress}/objects/Counter/name/demo/value
Ctrl-C stops both.",
        example = args.example,
        sp = sidecar.id().unwrap_or(0),
        ap = app_child.id().unwrap_or(0),
        bin = app_bin.display(),
        data = data_dir.display(),
    );

    let reason = tokio::select! {
        _ = shutdown_signal() => "stopping".to_owned(),
        s = sidecar.wait() => format!("the sidecar exited ({})", describe(s)),
        s = app_child.wait() => format!("the app exited ({})", describe(s)),
    };
    println!("stead dev: {reason}; shutting down");
    stop(&mut sidecar, "sidecar").await;
    stop(&mut app_child, "app").await;
    println!("stead dev: stopped");
    Ok(())
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
    match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
        Ok(_) => {}
        Err(_) => {
            println!("stead dev: the {what} did not stop within 10 s; killing it");
            let _ = child.kill().await;
        }
    }
}

pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
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
