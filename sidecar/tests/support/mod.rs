//! A real shard for tests: the `stead` sidecar and the `counter` example app as child processes
//! on loopback ports, with data in a fresh temporary folder.
#![allow(dead_code)]

pub mod proxy_app;
pub mod raw_ws;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A port for a child process to listen on (see [`stead_testkit::ports`]).
pub fn free_port() -> u16 {
    stead_testkit::ports::free_port().unwrap_or_else(|e| panic!("{e}"))
}

/// A shard serving a [`proxy_app::ProxyApp`] that the test drives itself, started with the
/// sidecar flags `extra`.
pub async fn with_proxy_app(extra: &[&str]) -> (Shard, proxy_app::ProxyApp) {
    let api = free_port();
    let app = proxy_app::ProxyApp::start(api).await;
    let shard = Shard::start_for(app.port, api, extra).await;
    (shard, app)
}

/// Makes one app API call inside a committed turn of object `name` of a [`with_proxy_app`]
/// shard; returns the API's status and body.
pub async fn call_in_turn(
    shard: &Shard,
    name: &str,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let (status, text) = tokio::time::timeout(
        Duration::from_secs(30),
        shard.send(
            "POST",
            &format!("/objects/Counter/name/{name}/call"),
            &serde_json::json!({"path": path, "body": body}).to_string(),
        ),
    )
    .await
    .expect("the turn did not end");
    assert_eq!(status, 200, "turn of {name} failed: {text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    (v["status"].as_u64().unwrap() as u16, v["body"].clone())
}

/// The `counter` binary built beside `stead` (the test command builds every binary first).
pub fn counter_bin() -> PathBuf {
    let stead = PathBuf::from(env!("CARGO_BIN_EXE_stead"));
    let bin = stead.with_file_name("counter");
    assert!(
        bin.exists(),
        "{} is missing: build the example first (`cargo build --workspace --bins`, which scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// A killed test binary must leave nothing running: the child gets SIGKILL when the test's
/// thread that started it ends (a test's own thread, or a runtime worker, both gone at the end of
/// the test at the latest).
pub fn die_with_test(cmd: &mut Command) {
    stead_sidecar::dev::die_with_parent(cmd);
}

pub struct Shard {
    pub ingress: u16,
    pub api: u16,
    pub admin: u16,
    pub app_port: u16,
    pub data_dir: PathBuf,
    pub extra_args: Vec<String>,
    sidecar: Option<Child>,
    app: Option<Child>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Shard {
    /// Starts the counter app and a sidecar with `extra` flags, and waits until both listen.
    pub async fn start(extra: &[&str]) -> Shard {
        let mut shard = Self::prepare(extra, free_port(), free_port());
        shard.start_app();
        shard.start_sidecar().await;
        wait_port(shard.app_port).await;
        shard
    }

    /// Starts a sidecar for an app that the test runs itself on `app_port`, calling the API
    /// on `api`.
    pub async fn start_for(app_port: u16, api: u16, extra: &[&str]) -> Shard {
        let mut shard = Self::prepare(extra, app_port, api);
        shard.start_sidecar().await;
        shard
    }

    fn prepare(extra: &[&str], app_port: u16, api: u16) -> Shard {
        let data_dir =
            std::env::temp_dir().join(format!("stead-test-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&data_dir).unwrap();
        Shard {
            ingress: free_port(),
            api,
            admin: free_port(),
            app_port,
            data_dir,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            sidecar: None,
            app: None,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    fn start_app(&mut self) {
        let mut cmd = Command::new(counter_bin());
        die_with_test(&mut cmd);
        let child = cmd
            .env("STEAD_APP_ADDR", format!("127.0.0.1:{}", self.app_port))
            .env("STEAD_API_URL", format!("http://127.0.0.1:{}", self.api))
            .stdin(Stdio::null())
            .spawn()
            .expect("start counter app");
        self.app = Some(child);
    }

    pub async fn start_sidecar(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_stead"));
        die_with_test(&mut cmd);
        let child = cmd
            .arg("sidecar")
            .args(["--ingress", &format!("127.0.0.1:{}", self.ingress)])
            .args(["--api", &format!("127.0.0.1:{}", self.api)])
            .args(["--admin", &format!("127.0.0.1:{}", self.admin)])
            .args(["--app", &format!("127.0.0.1:{}", self.app_port)])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--classes", "Counter"])
            .args(&self.extra_args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("start sidecar");
        self.sidecar = Some(child);
        wait_port(self.ingress).await;
        wait_port(self.api).await;
    }

    /// The sidecar's process id (to read its memory in `/proc`).
    pub fn sidecar_pid(&self) -> u32 {
        self.sidecar.as_ref().expect("sidecar running").id()
    }

    /// `kill -9` the sidecar and reap it.
    pub fn kill_sidecar(&mut self) {
        if let Some(mut c) = self.sidecar.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM to the sidecar (graceful stop), without waiting.
    pub fn stop_sidecar(&mut self) {
        if let Some(c) = &self.sidecar {
            // SAFETY: kill(2) on a child we spawned and have not reaped.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
        }
    }

    /// The sidecar's exit status if it has exited (then reaped), without waiting.
    pub fn sidecar_exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self
            .sidecar
            .as_mut()?
            .try_wait()
            .expect("try_wait sidecar")?;
        self.sidecar = None;
        Some(status)
    }

    /// Waits for the sidecar to exit on its own (e.g. a test hook aborted it).
    pub fn wait_sidecar_exit(&mut self) -> std::process::ExitStatus {
        let mut c = self.sidecar.take().expect("sidecar running");
        c.wait().expect("wait sidecar")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.ingress, path)
    }

    /// Sends a request to the ingress; returns status and body text.
    pub async fn send(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        self.send_with(method, &self.url(path), &[], body)
            .await
            .expect("request failed")
    }

    pub async fn send_with(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<(u16, String), String> {
        let mut req = http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_owned())))
            .map_err(|e| e.to_string())?;
        let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// The value of a metric line (first sample whose name and labels start with `prefix`).
    pub async fn metric(&self, prefix: &str) -> f64 {
        let url = format!("http://127.0.0.1:{}/metrics", self.admin);
        let (_, text) = self.send_with("GET", &url, &[], "").await.expect("metrics");
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("metric {prefix} not found in:\n{text}"))
    }

    pub fn database_files(&self) -> Vec<PathBuf> {
        let mut out = vec![];
        collect(&self.data_dir.join("slots"), &mut out);
        out.into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "sqlite"))
            .collect()
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                collect(&p, out);
            } else {
                out.push(p);
            }
        }
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        for c in [self.sidecar.take(), self.app.take()].into_iter().flatten() {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

pub async fn wait_port(port: u16) {
    for _ in 0..600 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on port {port} after 30 s");
}

/// Polls `check` every 100 ms for up to 30 s (timeouts generous: the machine is shared).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..300 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not true after 30 s");
}

/// `(pid, parent pid, state)` of every process, from `/proc/{pid}/stat`.
pub fn processes() -> Vec<(i32, i32, char)> {
    let mut out = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
        let Some((_, after)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = after.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        out.push((pid, ppid, state));
    }
    out
}
