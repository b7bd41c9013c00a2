//! A real control plane for the operator's tests: `etcd` and `kube-apiserver` on loopback, built
//! by `scripts/envtest.sh` into `${STEAD_ENVTEST_DIR:-$HOME/.cache/stead-envtest}/bin`. No
//! kubelet, scheduler or controller-manager runs: pods never start and nothing is garbage
//! collected; the tests check what the API server itself does (schema and CEL validation,
//! server-side apply, the status subresource, owner references).
//!
//! One control plane serves every test of the binary. Each process is started under a small
//! shell guard that reads the test process's end of a pipe: when the test binary exits, however
//! it exits, the pipe closes and the guard kills the process and removes its data.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};

/// How long etcd and the API server may take to come up on a loaded two-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// A running etcd + kube-apiserver pair.
pub struct ControlPlane {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub url: String,
    /// The guards' stdin; dropping (or exiting) stops the processes.
    _guards: Mutex<Vec<(Child, ChildStdin)>>,
}

/// Where the control-plane binaries are.
pub fn bin_dir() -> PathBuf {
    match std::env::var_os("STEAD_ENVTEST_DIR") {
        Some(dir) => PathBuf::from(dir).join("bin"),
        None => {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(".cache/stead-envtest/bin")
        }
    }
}

/// The shared control plane, or `None` when `STEAD_SKIP_ENVTEST=1` says to skip (printed
/// loudly). Panics with what to do when the binaries are missing or the processes do not start.
pub fn control_plane(test: &str) -> Option<&'static ControlPlane> {
    if std::env::var("STEAD_SKIP_ENVTEST").as_deref() == Ok("1") {
        // Straight to stderr, past the test harness's capture, so that the skip is seen.
        let _ = writeln!(
            std::io::stderr().lock(),
            "!!! envtest SKIPPED ({test}): STEAD_SKIP_ENVTEST=1; nothing was checked against a real API server"
        );
        return None;
    }
    static PLANE: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
    match PLANE.get_or_init(start) {
        Ok(plane) => Some(plane),
        Err(e) => panic!("envtest control plane: {e}"),
    }
}

fn start() -> Result<ControlPlane, String> {
    let bin = bin_dir();
    let etcd = bin.join("etcd");
    let apiserver = bin.join("kube-apiserver");
    for b in [&etcd, &apiserver] {
        if !b.is_file() {
            return Err(format!(
                "{} is missing: run scripts/envtest.sh first (it builds kube-apiserver and etcd from Go modules into {}), \
                 or set STEAD_SKIP_ENVTEST=1 to skip these tests",
                b.display(),
                bin.display()
            ));
        }
    }
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("envtest-{}", std::process::id()));
    remove_stale_dirs(&dir);
    std::fs::create_dir_all(dir.join("certs"))
        .map_err(|e| format!("create {}: {e}", dir.display()))?;

    let sa_key = dir.join("sa.key");
    let out = Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&sa_key)
        .arg("2048")
        .output()
        .map_err(|e| format!("run openssl (install it: apt-get install -y openssl): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "openssl genrsa: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let token = format!("envtest-{}-{}", std::process::id(), free_port()?);
    std::fs::write(
        dir.join("tokens.csv"),
        format!("{token},admin,admin,\"system:masters\"\n"),
    )
    .map_err(|e| format!("write tokens.csv: {e}"))?;

    let (etcd_port, peer_port, api_port) = (free_port()?, free_port()?, free_port()?);
    let etcd_url = format!("http://127.0.0.1:{etcd_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let mut guards = Vec::new();
    guards.push(guarded(
        &etcd,
        &[
            "--name=envtest".into(),
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=envtest={peer_url}"),
            "--unsafe-no-fsync=true".into(),
            "--log-level=warn".into(),
        ],
        &dir.join("etcd.log"),
    )?);
    wait_for_port(etcd_port, "etcd", &dir.join("etcd.log"))?;

    guards.push(guarded(
        &apiserver,
        &[
            format!("--etcd-servers={etcd_url}"),
            format!("--cert-dir={}", dir.join("certs").display()),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={api_port}"),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={}", sa_key.display()),
            format!("--service-account-signing-key-file={}", sa_key.display()),
            format!("--token-auth-file={}", dir.join("tokens.csv").display()),
            // RBAC, so that the chart's ClusterRole is put to the test; the admin token's
            // group, system:masters, may do anything.
            "--authorization-mode=RBAC".into(),
            "--anonymous-auth=false".into(),
            "--allow-privileged=true".into(),
            "--v=0".into(),
        ],
        &dir.join("kube-apiserver.log"),
    )?);
    wait_for_port(api_port, "kube-apiserver", &dir.join("kube-apiserver.log"))?;

    let url = format!("https://127.0.0.1:{api_port}");
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\n\
             clusters:\n- name: envtest\n  cluster:\n    server: {url}\n    insecure-skip-tls-verify: true\n\
             users:\n- name: admin\n  user:\n    token: {token}\n\
             contexts:\n- name: envtest\n  context:\n    cluster: envtest\n    user: admin\n\
             current-context: envtest\n"
        ),
    )
    .map_err(|e| format!("write kubeconfig: {e}"))?;
    eprintln!(
        "envtest: kube-apiserver at {url}, logs and data in {}",
        dir.display()
    );
    Ok(ControlPlane {
        dir,
        kubeconfig,
        url,
        _guards: Mutex::new(guards),
    })
}

impl ControlPlane {
    /// An admin client for this test's runtime, once the API server answers `/readyz`.
    pub async fn client(&self) -> kube::Client {
        self.client_as(None).await
    }

    /// A client acting as `user` (impersonated, with the groups every service account has),
    /// once the API server answers `/readyz`.
    pub async fn client_as(&self, user: Option<&str>) -> kube::Client {
        let kubeconfig =
            Kubeconfig::read_from(&self.kubeconfig).expect("read the envtest kubeconfig");
        let mut config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .expect("envtest kubeconfig");
        if let Some(user) = user {
            config.auth_info.impersonate = Some(user.to_owned());
            config.auth_info.impersonate_groups = Some(vec![
                "system:serviceaccounts".to_owned(),
                "system:authenticated".to_owned(),
            ]);
        }
        let client = kube::Client::try_from(config).expect("kube client");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("request");
            match client.request_text(req).await {
                Ok(body) if body.trim() == "ok" => return client,
                other if Instant::now() > deadline => panic!(
                    "kube-apiserver at {} not ready after {START_TIMEOUT:?}: {other:?}\n{}",
                    self.url,
                    tail(&self.dir.join("kube-apiserver.log"))
                ),
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }
}

/// Starts `bin args` under a guard that kills it when the test process's end of the guard's
/// stdin closes.
fn guarded(bin: &Path, args: &[String], log: &Path) -> Result<(Child, ChildStdin), String> {
    let log_file =
        std::fs::File::create(log).map_err(|e| format!("create {}: {e}", log.display()))?;
    let mut child = Command::new("sh")
        .arg("-c")
        // `read` returns when the test process exits and its end of the pipe closes. SIGKILL:
        // a graceful API server shutdown takes a minute, and the data is thrown away anyway.
        .arg(r#""$@" & p=$!; read -r _; kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null"#)
        .arg("guard")
        .arg(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
        .stderr(log_file)
        .spawn()
        .map_err(|e| format!("start {}: {e}", bin.display()))?;
    let stdin = child.stdin.take().expect("piped stdin");
    Ok((child, stdin))
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Ok(mut guards) = self._guards.lock() {
            for (child, stdin) in guards.iter_mut() {
                let _ = stdin.write_all(b"stop\n");
                let _ = child.wait();
            }
        }
    }
}

/// Removes the data of earlier test processes that are gone (a run's own directory is kept
/// while it runs, and after a failure until the next run, for its logs).
fn remove_stale_dirs(ours: &Path) {
    let Some(parent) = ours.parent() else { return };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("envtest-") else {
            continue;
        };
        if e.path() == ours || !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// A port below the ephemeral range (`stead_testkit::ports`): one the kernel hands out for port 0
/// could be given to another process's outgoing connection before etcd or kube-apiserver binds it.
fn free_port() -> Result<u16, String> {
    stead_testkit::ports::free_port().map_err(|e| e.to_string())
}

fn wait_for_port(port: u16, what: &str, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!(
                "{what} did not listen on 127.0.0.1:{port} within {START_TIMEOUT:?}\n{}",
                tail(log)
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The last lines of a log, for a failure message.
pub fn tail(log: &Path) -> String {
    let Ok(f) = std::fs::File::open(log) else {
        return format!("(no log at {})", log.display());
    };
    let lines: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
    let start = lines.len().saturating_sub(30);
    format!(
        "--- last lines of {} ---\n{}",
        log.display(),
        lines[start..].join("\n")
    )
}
