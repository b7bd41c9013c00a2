//! `stead dev` and its children: they die with it, even with `kill -9`, and a second `stead dev`
//! refuses a data folder or a port that is already in use instead of talking to strangers.
//! Real processes; which processes live is read from `/proc`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{counter_bin, eventually, free_port, processes};

/// One `stead dev` test at a time: their port blocks must not interleave.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A base port whose whole `stead dev` block (`p`, `p+1000` to `p+1003`) is free; a multiple of
/// ten, so that two bases taken one after the other never share a block.
fn dev_base_port() -> u16 {
    loop {
        let p = free_port();
        if !p.is_multiple_of(10) {
            continue;
        }
        let rest_free = (1000..=1003).all(|d| {
            p.checked_add(d)
                .is_some_and(|q| std::net::TcpListener::bind(("127.0.0.1", q)).is_ok())
        });
        if rest_free {
            return p;
        }
    }
}

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "stead-dev-test-{}-{what}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn dev_command(port: u16, data_dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stead"));
    cmd.arg("dev")
        .args(["--example", "counter", "--port", &port.to_string()])
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--app-bin")
        .arg(counter_bin())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    // If this test dies, its `stead dev` dies too (and takes its children along).
    stead_sidecar::dev::die_with_parent(&mut cmd);
    cmd
}

/// A running `stead dev`; dropping it is `kill -9`.
struct Dev(Child);

impl Dev {
    fn start(port: u16, data_dir: &Path) -> Dev {
        let child = dev_command(port, data_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start stead dev");
        Dev(child)
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    fn kill_9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// Runs a `stead dev` that must refuse to start; returns its exit status and its stderr.
async fn refused(port: u16, data_dir: &Path) -> (std::process::ExitStatus, String) {
    let err = data_dir.join("refused.stderr");
    let mut child = dev_command(port, data_dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("start stead dev");
    for _ in 0..300 {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, std::fs::read_to_string(&err).unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the second stead dev did not refuse within 30 s");
}

fn children_of(pid: i32) -> Vec<i32> {
    processes()
        .into_iter()
        .filter(|&(_, ppid, state)| ppid == pid && state != 'Z')
        .map(|(p, _, _)| p)
        .collect()
}

/// Makes this test process the reaper of its orphaned descendants, so that the children of a
/// killed `stead dev` come back here to be reaped instead of staying zombies under a PID 1 that
/// may not reap.
fn become_subreaper() {
    // SAFETY: prctl(2) with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "PR_SET_CHILD_SUBREAPER");
}

/// Alive: present in `/proc` and not a zombie (a zombie runs nothing and holds no port). A
/// zombie that is ours (see [`become_subreaper`]) is reaped on the way.
fn alive(pid: i32) -> bool {
    // SAFETY: waitpid(2) without a status pointer; WNOHANG never blocks.
    unsafe {
        libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG);
    }
    processes()
        .into_iter()
        .any(|(p, _, state)| p == pid && state != 'Z')
}

/// `POST /objects/Counter/name/{name}/increment` on the ingress; the body of a 200, else `None`.
async fn increment(port: u16, name: &str) -> Option<String> {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let req = http::Request::post(format!(
        "http://127.0.0.1:{port}/objects/Counter/name/{name}/increment"
    ))
    .body(Full::default())
    .unwrap();
    let resp = client.request(req).await.ok()?;
    if resp.status() != 200 {
        return None;
    }
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some(String::from_utf8_lossy(&body).into_owned())
}

/// Waits (up to 60 s) until `stead dev` serves `POST increment`; returns the answer.
async fn first_increment(port: u16, name: &str) -> String {
    for _ in 0..600 {
        if let Some(answer) = increment(port, name).await {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("stead dev on port {port} does not serve requests after 60 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_stead_dev_takes_its_children_along() {
    let _turn = ONE_AT_A_TIME.lock().await;
    become_subreaper();
    let port = dev_base_port();
    let data = temp_dir("kill");
    let mut dev = Dev::start(port, &data);
    assert_eq!(first_increment(port, "k").await.trim(), "1");
    let children = children_of(dev.pid());
    assert_eq!(children.len(), 2, "a sidecar and an app: {children:?}");

    dev.kill_9();
    eventually("the sidecar and the app die with stead dev", || {
        let left = children.iter().any(|&c| alive(c));
        async move { !left }
    })
    .await;

    // The ports are free again: a new `stead dev` starts there and serves the same data.
    let dev2 = Dev::start(port, &data);
    assert_eq!(first_increment(port, "k").await.trim(), "2");
    let children2 = children_of(dev2.pid());
    assert_eq!(children2.len(), 2, "{children2:?}");
    assert!(children2.iter().all(|c| !children.contains(c)));
    drop(dev2);
    eventually("the second stead dev's children die with it", || {
        let left = children2.iter().any(|&c| alive(c));
        async move { !left }
    })
    .await;
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stead_dev_on_a_used_data_folder_or_port_is_refused() {
    let _turn = ONE_AT_A_TIME.lock().await;
    become_subreaper();
    let port = dev_base_port();
    let data = temp_dir("first");
    let dev = Dev::start(port, &data);
    assert_eq!(first_increment(port, "r").await.trim(), "1");

    let (status, stderr) = refused(dev_base_port(), &data).await;
    assert!(!status.success());
    assert!(
        stderr.contains("another `stead dev` is running on the data folder"),
        "{stderr}"
    );

    let other = temp_dir("second");
    let (status, stderr) = refused(port, &other).await;
    assert!(!status.success());
    assert!(
        stderr.contains(&format!("port {port} (the ingress) is already in use")),
        "{stderr}"
    );

    // The first one was not disturbed.
    assert_eq!(
        increment(port, "r").await.as_deref().map(str::trim),
        Some("2")
    );
    let children = children_of(dev.pid());
    drop(dev);
    eventually("the children die with stead dev", || {
        let left = children.iter().any(|&c| alive(c));
        async move { !left }
    })
    .await;
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_dir_all(&other);
}
