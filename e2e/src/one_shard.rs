//! [`OneShard`]: one `stead sidecar` and one example app as real processes on loopback, with
//! the app's protocol chosen per start (`STEAD_APP_PROTOCOL`) and an [`ApiTap`] between the app
//! and the sidecar's app API that counts every call the app makes, by path.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::client::Client;
use crate::local::{built_binary, die_with_parent, free_port};

/// Environment variable of the Rust SDK that forces the app protocol.
pub use stead_core::protocol::ENV_APP_PROTOCOL;

/// How the sidecar reaches the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppTransport {
    /// Loopback TCP (`--app 127.0.0.1:port`).
    Tcp,
    /// A Unix domain socket in the shard's folder (`--app unix:/path`).
    Unix,
}

/// Where the app listens.
#[derive(Debug, Clone)]
enum AppAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl AppAddr {
    /// The value of `STEAD_APP_ADDR` and of the sidecar's `--app`.
    fn arg(&self) -> String {
        match self {
            AppAddr::Tcp(a) => a.to_string(),
            AppAddr::Unix(p) => format!("unix:{}", p.display()),
        }
    }

    async fn accepts(&self) -> bool {
        match self {
            AppAddr::Tcp(a) => tokio::net::TcpStream::connect(a).await.is_ok(),
            AppAddr::Unix(p) => tokio::net::UnixStream::connect(p).await.is_ok(),
        }
    }
}

/// Which app protocol the app is started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppProtocol {
    /// Whatever the SDK speaks by default (protocol 2 with a sidecar that offers it).
    Latest,
    /// `STEAD_APP_PROTOCOL=1`: every storage operation is a call.
    One,
}

/// A loopback HTTP proxy in front of the sidecar's app API that counts requests by path.
pub struct ApiTap {
    addr: SocketAddr,
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ApiTap {
    /// Listens on a free loopback port and forwards every request to `api`.
    pub async fn start(api: SocketAddr) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Mutex::new(BTreeMap::new()));
        let client: HyperClient<HttpConnector, Full<Bytes>> =
            HyperClient::builder(TokioExecutor::new()).build_http();
        let task = {
            let counts = Arc::clone(&counts);
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let _ = stream.set_nodelay(true);
                    let counts = Arc::clone(&counts);
                    let client = client.clone();
                    let service = hyper::service::service_fn(move |req| {
                        forward(req, api, client.clone(), Arc::clone(&counts))
                    });
                    tokio::spawn(async move {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        };
        Ok(Self { addr, counts, task })
    }

    /// The base URL the app calls.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Calls so far, by path (e.g. `/v1/kv/get`).
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Calls so far whose path starts with `prefix`.
    pub fn count(&self, prefix: &str) -> u64 {
        (self.counts().iter())
            .filter(|(p, _)| p.starts_with(prefix))
            .map(|(_, n)| n)
            .sum()
    }
}

impl Drop for ApiTap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Headers about one hop, not about the message.
fn hop_by_hop(name: &http::HeaderName) -> bool {
    [
        http::header::HOST,
        http::header::CONNECTION,
        http::header::CONTENT_LENGTH,
        http::header::TRANSFER_ENCODING,
    ]
    .contains(name)
}

async fn forward(
    req: http::Request<Incoming>,
    api: SocketAddr,
    client: HyperClient<HttpConnector, Full<Bytes>>,
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    *counts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(parts.uri.path().to_owned())
        .or_default() += 1;
    let failed = |why: String| {
        let mut res = http::Response::new(Full::new(Bytes::from(why)));
        *res.status_mut() = http::StatusCode::BAD_GATEWAY;
        Ok(res)
    };
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return failed(format!("tap: request body: {e}")),
    };
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let mut out = http::Request::new(Full::new(body));
    *out.method_mut() = parts.method;
    *out.uri_mut() = match format!("http://{api}{target}").parse() {
        Ok(u) => u,
        Err(e) => return failed(format!("tap: {e}")),
    };
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            out.headers_mut().append(name.clone(), value.clone());
        }
    }
    let res = match client.request(out).await {
        Ok(r) => r,
        Err(e) => return failed(format!("tap: {e}")),
    };
    let (parts, body) = res.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return failed(format!("tap: answer body: {e}")),
    };
    let mut back = http::Response::new(Full::new(body));
    *back.status_mut() = parts.status;
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            back.headers_mut().append(name.clone(), value.clone());
        }
    }
    Ok(back)
}

/// One sidecar and one app, on loopback. Dropping it kills both and removes the data (kept, with
/// the logs, when the test failed).
pub struct OneShard {
    app_bin: PathBuf,
    classes: String,
    dir: PathBuf,
    ingress: SocketAddr,
    admin: SocketAddr,
    api: SocketAddr,
    app_addr: AppAddr,
    sidecar_args: Vec<String>,
    sidecar: Option<Child>,
    app: Option<Child>,
    tap: ApiTap,
    client: Client,
    /// Keep the data and logs when dropped (the start failed).
    keep: bool,
}

impl OneShard {
    /// Starts the example binary `app` (serving `classes`, comma-separated) speaking
    /// `protocol`, and a sidecar, and waits until the sidecar is ready.
    pub async fn start(app: &str, classes: &str, protocol: AppProtocol) -> anyhow::Result<Self> {
        Self::start_over(app, classes, protocol, AppTransport::Tcp).await
    }

    /// [`OneShard::start`], with the sidecar reaching the app over `transport`.
    pub async fn start_over(
        app: &str,
        classes: &str,
        protocol: AppProtocol,
        transport: AppTransport,
    ) -> anyhow::Result<Self> {
        Self::start_with_args(app, classes, protocol, transport, &[]).await
    }

    /// [`OneShard::start_over`], with `sidecar_args` added to the sidecar's command line.
    pub async fn start_with_args(
        app: &str,
        classes: &str,
        protocol: AppProtocol,
        transport: AppTransport,
        sidecar_args: &[&str],
    ) -> anyhow::Result<Self> {
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("stead-e2e-one-{}-{n}", std::process::id()));
        std::fs::create_dir_all(dir.join("data"))
            .with_context(|| format!("create {}", dir.display()))?;
        let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let api = at(free_port()?);
        let app_addr = match transport {
            AppTransport::Tcp => AppAddr::Tcp(at(free_port()?)),
            AppTransport::Unix => AppAddr::Unix(dir.join("app.sock")),
        };
        let mut shard = Self {
            app_bin: built_binary(app)?,
            classes: classes.to_owned(),
            dir,
            ingress: at(free_port()?),
            admin: at(free_port()?),
            api,
            app_addr,
            sidecar_args: sidecar_args.iter().map(|a| a.to_string()).collect(),
            sidecar: None,
            app: None,
            tap: ApiTap::start(api).await?,
            client: Client::new(),
            keep: false,
        };
        let started = async {
            shard.spawn_app(protocol)?;
            shard.spawn_sidecar()?;
            shard.wait_ready().await
        };
        if let Err(e) = started.await {
            shard.keep = true;
            return Err(e);
        }
        Ok(shard)
    }

    fn log(&self, what: &str) -> anyhow::Result<(std::fs::File, std::fs::File)> {
        let path = self.dir.join(format!("{what}.log"));
        let out = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        let err = out.try_clone()?;
        Ok((out, err))
    }

    fn spawn_app(&mut self, protocol: AppProtocol) -> anyhow::Result<()> {
        let (out, err) = self.log("app")?;
        let mut cmd = std::process::Command::new(&self.app_bin);
        die_with_parent(&mut cmd);
        cmd.env(stead_core::protocol::ENV_APP_ADDR, self.app_addr.arg())
            .env(stead_core::protocol::ENV_API_URL, self.tap.url())
            .env("RUST_LOG", "warn")
            .env_remove(ENV_APP_PROTOCOL);
        if protocol == AppProtocol::One {
            cmd.env(ENV_APP_PROTOCOL, "1");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("start {}", self.app_bin.display()))?;
        self.app = Some(child);
        Ok(())
    }

    fn spawn_sidecar(&mut self) -> anyhow::Result<()> {
        let api = self.api;
        let (out, err) = self.log("sidecar")?;
        let stead = built_binary("stead")?;
        let mut cmd = std::process::Command::new(&stead);
        die_with_parent(&mut cmd);
        let child = cmd
            .arg("sidecar")
            .args(["--ingress", &self.ingress.to_string()])
            .args(["--api", &api.to_string()])
            .args(["--admin", &self.admin.to_string()])
            .args(["--app", &self.app_addr.arg()])
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--classes", &self.classes])
            .args(&self.sidecar_args)
            .env(
                "RUST_LOG",
                std::env::var("STEAD_E2E_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("start {}", stead.display()))?;
        self.sidecar = Some(child);
        Ok(())
    }

    /// Waits until the sidecar is ready (see [`OneShard::is_ready`]) and its ingress accepts
    /// connections.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        for _ in 0..600 {
            for (what, child) in [("sidecar", &mut self.sidecar), ("app", &mut self.app)] {
                if let Some(c) = child
                    && let Ok(Some(status)) = c.try_wait()
                {
                    anyhow::bail!(
                        "the {what} exited ({status}); logs in {}",
                        self.dir.display()
                    );
                }
            }
            if self.is_ready().await && tokio::net::TcpStream::connect(self.ingress).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("not ready after 60 s; logs in {}", self.dir.display())
    }

    /// The sidecar answers `/readyz` with 200 (its app accepts connections). With the app on a
    /// Unix socket: the app accepts connections on it, whatever `/readyz` says (the sidecar's
    /// readiness check connects over TCP only; see the ignored test
    /// `readyz_is_ok_with_the_app_on_a_unix_socket`).
    async fn is_ready(&self) -> bool {
        match &self.app_addr {
            AppAddr::Tcp(_) => self.readyz().await == Some(200),
            AppAddr::Unix(_) => self.app_addr.accepts().await,
        }
    }

    /// The status of the sidecar's `/readyz`, if it answered.
    pub async fn readyz(&self) -> Option<u16> {
        let url = format!("http://{}/readyz", self.admin);
        self.client.get(&url).await.ok().map(|r| r.status)
    }

    /// `kill -9` the app and start it again speaking `protocol`; the sidecar keeps running.
    pub async fn restart_app(&mut self, protocol: AppProtocol) -> anyhow::Result<()> {
        if let Some(mut c) = self.app.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn_app(protocol)?;
        // The sidecar sees the app again once it accepts connections.
        for _ in 0..600 {
            if self.app_addr.accepts().await {
                return self.wait_ready().await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!(
            "the app did not listen again; logs in {}",
            self.dir.display()
        )
    }

    /// `kill -9` the sidecar and reap it; the app keeps running.
    pub fn kill_sidecar(&mut self) {
        if let Some(mut c) = self.sidecar.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the sidecar again on the same data (after [`OneShard::kill_sidecar`]) and waits
    /// until it is ready.
    pub async fn start_sidecar(&mut self) -> anyhow::Result<()> {
        self.spawn_sidecar()?;
        self.wait_ready().await
    }

    /// The ingress URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.ingress)
    }

    /// The HTTP client of the test.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The calls the app made to the app API.
    pub fn tap(&self) -> &ApiTap {
        &self.tap
    }

    /// The Prometheus text of the sidecar's admin port.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let url = format!("http://{}/metrics", self.admin);
        let reply = self.client.get(&url).await.map_err(anyhow::Error::msg)?;
        anyhow::ensure!(reply.status == 200, "{url}: {}", reply.status);
        Ok(reply.body)
    }
}

impl Drop for OneShard {
    fn drop(&mut self) {
        for child in [self.sidecar.take(), self.app.take()].into_iter().flatten() {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.keep || std::thread::panicking() {
            eprintln!(
                "stead-e2e: the test failed; data and logs kept in {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
