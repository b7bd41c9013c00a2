//! A real life shard for tests: a `stead sidecar` and the `life` app as child processes on
//! loopback ports, with data in a fresh temporary folder, removed with the processes.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// A port for a child to listen on (see [`stead_testkit::ports`]).
pub fn free_port() -> u16 {
    stead_testkit::ports::free_port().unwrap_or_else(|e| panic!("{e}"))
}

pub async fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} does not listen on port {port} after 30 s");
}

/// Child processes and folders, killed and removed when the test ends, however it ends.
#[derive(Default)]
pub struct Cleanup {
    pub children: Vec<Child>,
    pub dirs: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A running shard: where its ingress listens and where its files are.
pub struct LifeShard {
    pub ingress: u16,
    /// The test's scratch folder (data in `data/`), removed by the [`Cleanup`].
    pub scratch: PathBuf,
    /// `target/`, where the test may leave artefacts such as screenshots.
    pub target_dir: PathBuf,
}

/// Starts the life app and a sidecar serving `Lobby` and `GameRoom`, registered in `cleanup`.
/// `name` keeps the scratch folders of concurrent tests apart.
pub async fn start_shard(cleanup: &mut Cleanup, name: &str) -> LifeShard {
    let life = PathBuf::from(env!("CARGO_BIN_EXE_life"));
    let stead = life.with_file_name("stead");
    assert!(
        stead.exists(),
        "{} is missing: build every binary first (`cargo build --workspace --bins`, which scripts/test.sh does)",
        stead.display()
    );
    let target_dir = life
        .parent()
        .and_then(Path::parent)
        .expect("target/{profile}/life")
        .to_path_buf();
    let scratch = std::env::temp_dir().join(format!("stead-life-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(scratch.join("data")).unwrap();
    cleanup.dirs.push(scratch.clone());

    let (ingress, api, admin, app) = (free_port(), free_port(), free_port(), free_port());
    cleanup.children.push(
        Command::new(&life)
            .env("STEAD_APP_ADDR", format!("127.0.0.1:{app}"))
            .env("STEAD_API_URL", format!("http://127.0.0.1:{api}"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("start the life app"),
    );
    cleanup.children.push(
        Command::new(&stead)
            .arg("sidecar")
            .args(["--ingress", &format!("127.0.0.1:{ingress}")])
            .args(["--api", &format!("127.0.0.1:{api}")])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .args(["--app", &format!("127.0.0.1:{app}")])
            .arg("--data-dir")
            .arg(scratch.join("data"))
            .args(["--classes", "Lobby,GameRoom"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("start the sidecar"),
    );
    wait_port(app, "the life app").await;
    wait_port(ingress, "the sidecar's ingress").await;
    wait_port(api, "the sidecar's app API").await;
    LifeShard {
        ingress,
        scratch,
        target_dir,
    }
}
