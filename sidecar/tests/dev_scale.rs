//! `stead scale` and a resizable `stead dev`: a running local cluster grows and shrinks with its
//! objects' values intact and every object's database on exactly one shard; `stead dev`
//! restarted with another `--shards` reshards to it; `stead scale` without a running `stead dev`,
//! or while another resize runs, says so. Real processes (`stead dev --example counter`, its
//! sidecars and apps), real files, loopback HTTP.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use stead_sidecar::dev::{CLUSTER_FILE, ClusterRecord};
use stead_sidecar::scale::{CONTROL_FILE, CONTROL_TOKEN, ControlFile, RESIZE_PATH};
use support::{counter_bin, eventually, free_port, processes};

/// One `stead dev` at a time: their port blocks must not interleave.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Objects written before each resize.
const OBJECTS: usize = 40;
/// Slots of the tests' clusters: fewer than the default, so that a resize takes seconds.
const SLOTS: u32 = 512;

/// A base port (a multiple of ten) whose ports for `shards` shards are all free: the ingresses
/// `p..p+shards` and each shard's block `p+1000+10·i ..= +3`.
fn dev_base_port(shards: u16) -> u16 {
    loop {
        let p = free_port();
        if !p.is_multiple_of(10) {
            continue;
        }
        let free = |q: Option<u16>| {
            q.is_some_and(|q| std::net::TcpListener::bind(("127.0.0.1", q)).is_ok())
        };
        let ingress = (1..shards).all(|i| free(p.checked_add(i)));
        let blocks = (0..shards).all(|i| (1000..=1003).all(|d| free(p.checked_add(d + 10 * i))));
        if ingress && blocks {
            return p;
        }
    }
}

/// A test's folder: `data/` for `stead dev`, and the output of each process started.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "stead-dev-scale-{}-{what}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        Self(dir)
    }

    fn data(&self) -> PathBuf {
        self.0.join("data")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept for inspection: {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A running `stead dev` whose output goes to a file; dropping it is `kill -9` (its children
/// die with it).
struct Dev {
    child: Child,
    out: PathBuf,
    port: u16,
}

impl Dev {
    /// On the scratch folder, with [`SLOTS`] slots.
    fn start(scratch: &Scratch, port: u16, shards: Option<u16>, name: &str) -> Dev {
        let slots = format!("--sidecar-arg=--slots={SLOTS}");
        let out = scratch.0.join(format!("{name}.out"));
        Self::start_on(&scratch.data(), out, port, shards, &[&slots])
    }

    fn start_on(data: &Path, out: PathBuf, port: u16, shards: Option<u16>, extra: &[&str]) -> Dev {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_stead"));
        cmd.arg("dev")
            .args(["--example", "counter", "--port", &port.to_string()])
            .arg("--data-dir")
            .arg(data)
            .arg("--app-bin")
            .arg(counter_bin())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::from(
                std::fs::File::options().append(true).open(&out).unwrap(),
            ));
        if let Some(n) = shards {
            cmd.args(["--shards", &n.to_string()]);
        }
        cmd.args(extra);
        stead_sidecar::dev::die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("start stead dev");
        Dev { child, out, port }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGTERM, and waits (up to 60 s) until it has stopped its shards and exited.
    async fn stop(mut self) -> ExitStatus {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("stead dev did not stop within 60 s:\n{}", self.output());
    }

    fn kill_9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET` the control port of the `stead dev` on `data`: the resize progress.
async fn progress(data: &Path) -> serde_json::Value {
    let control: ControlFile =
        serde_json::from_slice(&std::fs::read(data.join(CONTROL_FILE)).unwrap()).unwrap();
    let url = format!("http://{}{RESIZE_PATH}", control.addr);
    let (status, body) = call("GET", &url, Some((CONTROL_TOKEN, &control.token)), "")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Runs `stead scale` to its end (at most 120 s): exit status, stdout, stderr.
async fn scale(data: &Path, shards: u16) -> (ExitStatus, String, String) {
    let dir = data.parent().unwrap();
    let out = dir.join(format!("scale-{shards}-{}.out", free_port()));
    let err = out.with_extension("err");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stead"));
    cmd.arg("scale")
        .args(["--shards", &shards.to_string()])
        .arg("--data-dir")
        .arg(data)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap());
    stead_sidecar::dev::die_with_parent(&mut cmd);
    let mut child = cmd.spawn().expect("start stead scale");
    for _ in 0..1200 {
        if let Some(status) = child.try_wait().unwrap() {
            return (
                status,
                std::fs::read_to_string(&out).unwrap(),
                std::fs::read_to_string(&err).unwrap(),
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!(
        "stead scale --shards {shards} did not end within 120 s: {}",
        std::fs::read_to_string(&out).unwrap_or_default()
    );
}

fn client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>()
}

/// One HTTP call; `None` when nothing answered.
async fn call(
    method: &str,
    url: &str,
    header: Option<(&str, &str)>,
    body: &str,
) -> Option<(u16, String)> {
    let mut req = http::Request::builder().method(method).uri(url);
    if let Some((k, v)) = header {
        req = req.header(k, v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), client().request(req))
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

fn object_url(port: u16, name: &str, route: &str) -> String {
    format!("http://127.0.0.1:{port}/objects/Counter/name/{name}/{route}")
}

/// `POST increment` until it is answered 200 (a 503 + `Retry-After` during a slot's switch-over
/// is retried); the new value.
async fn increment(port: u16, name: &str) -> i64 {
    for _ in 0..600 {
        match call("POST", &object_url(port, name, "increment"), None, "").await {
            Some((200, body)) => return body.trim().parse().unwrap(),
            Some((503, _)) | None => {}
            Some((status, body)) => panic!("increment of {name}: {status} {body}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("increment of {name} not answered 200 within 60 s");
}

async fn value(port: u16, name: &str) -> i64 {
    for _ in 0..300 {
        match call("GET", &object_url(port, name, "value"), None, "").await {
            Some((200, body)) => return body.trim().parse().unwrap(),
            Some((503, _)) | None => {}
            Some((status, body)) => panic!("value of {name}: {status} {body}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("value of {name} not answered 200 within 30 s");
}

/// Waits until every shard of the cluster answers an increment (of the object `ready`, which
/// counts among the databases) through its own ingress.
async fn wait_serving(dev: &Dev, shards: u16) {
    for i in 0..shards {
        increment(dev.port + i, "ready").await;
    }
}

/// Gives object `i` `i % 3 + 1` increments through rotating entries; the expected values.
async fn write_objects(port: u16, shards: u16, prefix: &str) -> BTreeMap<String, i64> {
    let mut expected = BTreeMap::new();
    for i in 0..OBJECTS {
        let name = format!("{prefix}{i}");
        let times = (i % 3 + 1) as i64;
        for t in 0..times {
            let entry = port + ((i as u16 + t as u16) % shards);
            assert_eq!(increment(entry, &name).await, t + 1, "{name}");
        }
        expected.insert(name, times);
    }
    expected
}

/// Every object answers its expected value through every entry.
async fn check_values(port: u16, shards: u16, expected: &BTreeMap<String, i64>) {
    for (name, want) in expected {
        for i in 0..shards {
            assert_eq!(
                value(port + i, name).await,
                *want,
                "{name} through shard {i}"
            );
        }
    }
}

/// Object database file names (`{id}.sqlite`) under each `shard-{i}` folder of `data`.
fn databases_by_shard(data: &Path) -> BTreeMap<String, Vec<String>> {
    fn collect(dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                collect(&path, out);
            } else if let Some(name) = path.file_name().and_then(|n| n.to_str())
                && name.ends_with(".sqlite")
                && path.parent().and_then(|p| p.file_name()) == Some("Counter".as_ref())
            {
                out.push(name.to_owned());
            }
        }
    }
    let mut by_shard = BTreeMap::new();
    for entry in std::fs::read_dir(data).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("shard-") {
            let mut files = vec![];
            collect(&entry.path().join("slots"), &mut files);
            by_shard.insert(name, files);
        }
    }
    by_shard
}

/// Every object's database exists under exactly one shard folder; answers how many each holds.
fn check_one_copy_each(data: &Path, objects: usize) -> BTreeMap<String, usize> {
    let by_shard = databases_by_shard(data);
    let mut seen = BTreeSet::new();
    for (shard, files) in &by_shard {
        for f in files {
            assert!(
                seen.insert(f.clone()),
                "{f} is on two shards (again on {shard})"
            );
        }
    }
    assert_eq!(seen.len(), objects, "object databases: {by_shard:?}");
    by_shard
        .into_iter()
        .map(|(shard, files)| (shard, files.len()))
        .collect()
}

fn record(data: &Path) -> ClusterRecord {
    serde_json::from_slice(&std::fs::read(data.join(CLUSTER_FILE)).unwrap()).unwrap()
}

/// `(slots moved, objects moved, ring epoch)` from the summary line of `stead scale`.
fn summary_numbers(stdout: &str, from: u16, to: u16) -> (u64, u64, u64) {
    let prefix = format!("stead scale: resized from {from} to {to} shards: moved ");
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no summary in:\n{stdout}"));
    let words: Vec<&str> = line[prefix.len()..].split(' ').collect();
    // `2731 slots and 40 objects (3.5 MiB) in 4.2 s; ring epoch 2`
    assert_eq!(
        (words[1], words[2], words[4]),
        ("slots", "and", "objects"),
        "{line}"
    );
    let moved = words[0].parse().unwrap();
    let objects = words[3].parse().unwrap();
    let epoch = line
        .rsplit_once("ring epoch ")
        .map(|(_, e)| e.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no epoch in {line}"));
    (moved, objects, epoch)
}

/// `(pid, command line)` of the living children of `pid`, from `/proc`.
fn children(pid: i32) -> Vec<(i32, String)> {
    processes()
        .into_iter()
        .filter(|&(_, ppid, state)| ppid == pid && state != 'Z')
        .map(|(child, _, _)| {
            let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            (child, String::from_utf8_lossy(&cmdline).replace('\0', " "))
        })
        .collect()
}

/// Present in `/proc` and not a zombie (a zombie holds no port).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, after) = stat.rsplit_once(')')?;
            after.split_whitespace().next().map(|s| s != "Z")
        })
        .unwrap_or(false)
}

/// The sidecars among `stead dev`'s children: `(pid, command line)`.
fn sidecars(dev: &Dev) -> Vec<(i32, String)> {
    children(dev.pid())
        .into_iter()
        .filter(|(_, c)| c.contains(" sidecar "))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_1_to_3_then_shrink_to_2_keeps_every_object_once_with_its_value() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let scratch = Scratch::new("grow");
    let data = scratch.data();
    let port = dev_base_port(3);
    let dev = Dev::start(&scratch, port, None, "dev");
    wait_serving(&dev, 1).await;
    let mut expected = write_objects(port, 1, "o").await;
    assert_eq!(record(&data).shards, 1);

    let (status, stdout, stderr) = scale(&data, 3).await;
    assert!(status.success(), "{stdout}{stderr}\n{}", dev.output());
    let (moved, objects, epoch) = summary_numbers(&stdout, 1, 3);
    assert!(moved > 0 && objects > 0, "{stdout}");
    assert!(epoch >= 2, "{stdout}");
    assert_eq!(
        record(&data),
        ClusterRecord {
            shards: 3,
            epoch,
            resizing_to: None
        }
    );
    check_values(port, 3, &expected).await;
    let held = check_one_copy_each(&data, OBJECTS + 1);
    assert!(
        held.get("shard-1").copied().unwrap_or(0) + held.get("shard-2").copied().unwrap_or(0) > 0,
        "no object moved to the new shards: {held:?}"
    );
    // Writes go on, through every entry.
    for (i, (name, want)) in expected.iter_mut().enumerate() {
        *want += 1;
        assert_eq!(increment(port + (i % 3) as u16, name).await, *want);
    }

    // A sidecar the supervisor restarts now starts on the new ring.
    let before = sidecars(&dev);
    assert_eq!(before.len(), 3, "{before:?}");
    let ring = format!("--ring-shards 3 --ring-epoch {epoch}");
    let (victim, _) = before
        .iter()
        .find(|(_, c)| c.contains("--shard-ordinal 0 "))
        .cloned()
        .unwrap();
    // SAFETY: kill(2) of a process of this test's tree.
    unsafe {
        libc::kill(victim, libc::SIGKILL);
    }
    eventually("the killed sidecar of shard 0 is restarted", || {
        let now = sidecars(&dev);
        let back = now
            .iter()
            .any(|(pid, c)| *pid != victim && c.contains("--shard-ordinal 0 "));
        async move { back }
    })
    .await;
    let restarted = sidecars(&dev)
        .into_iter()
        .find(|(_, c)| c.contains("--shard-ordinal 0 "))
        .unwrap();
    assert!(restarted.1.contains(&ring), "{}", restarted.1);
    check_values(port, 3, &expected).await;

    let (status, stdout, stderr) = scale(&data, 2).await;
    assert!(status.success(), "{stdout}{stderr}\n{}", dev.output());
    let (moved, objects, epoch2) = summary_numbers(&stdout, 3, 2);
    assert!(moved > 0 && objects > 0 && epoch2 > epoch, "{stdout}");
    assert_eq!(record(&data).shards, 2);
    check_values(port, 2, &expected).await;
    let held = check_one_copy_each(&data, OBJECTS + 1);
    assert_eq!(held.get("shard-2").copied(), Some(0), "{held:?}");
    // Shard 2's processes are gone; its folder stays.
    let left = children(dev.pid());
    assert_eq!(left.len(), 4, "two sidecars and two apps: {left:?}");
    assert!(data.join("shard-2").join("shard.sqlite").exists());
    let status = dev.stop().await;
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stead_scale_without_a_running_stead_dev_says_so() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let scratch = Scratch::new("nodev");
    let data = scratch.data();
    let (status, stdout, stderr) = scale(&data, 2).await;
    assert!(!status.success(), "{stdout}");
    let want = "no `stead dev` is running on the data folder";
    assert!(stderr.contains(want), "{stderr}");

    // A control file left by a killed `stead dev`: nothing listens there any more.
    let stale = ControlFile {
        addr: format!("127.0.0.1:{}", free_port()),
        token: "gone".into(),
        pid: 1,
    };
    std::fs::write(data.join(CONTROL_FILE), serde_json::to_vec(&stale).unwrap()).unwrap();
    let (status, _, stderr) = scale(&data, 2).await;
    assert!(!status.success());
    assert!(stderr.contains(want), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_another_shards_flag_reshards_and_a_second_resize_is_refused() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let scratch = Scratch::new("restart");
    let data = scratch.data();
    let port = dev_base_port(3);
    let dev = Dev::start(&scratch, port, Some(2), "dev1");
    wait_serving(&dev, 2).await;
    let expected = write_objects(port, 2, "r").await;
    assert!(dev.stop().await.success());
    assert_eq!(record(&data).shards, 2);

    // Started with --shards 3 on a two-shard folder: serves two, then reshards to three. Each
    // hand-off step waits a little, so the resize surely still runs when the test asks for
    // another one.
    let slots = format!("--sidecar-arg=--slots={SLOTS}");
    let dev = Dev::start_on(
        &data,
        scratch.0.join("dev2.out"),
        port,
        Some(3),
        &[&slots, "--sidecar-arg=--test-handoff-step-delay=50ms"],
    );
    eventually("the control file is written", || {
        let there = data.join(CONTROL_FILE).exists();
        async move { there }
    })
    .await;
    let control: ControlFile =
        serde_json::from_slice(&std::fs::read(data.join(CONTROL_FILE)).unwrap()).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(data.join(CONTROL_FILE))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let url = format!("http://{}{RESIZE_PATH}", control.addr);
    let token = Some((CONTROL_TOKEN, control.token.as_str()));

    // The control port wants its token.
    let (status, body) = call("GET", &url, None, "").await.unwrap();
    assert_eq!(status, 401, "{body}");
    let (status, body) = call("POST", &url, token, r#"{"shards":0}"#).await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid_shards"), "{body}");

    let mut refused = false;
    // Set when a request found the resize already ended: the progress then shows that no-op.
    let mut ended_before_a_request = false;
    let done = loop {
        let (status, body) = call("GET", &url, token, "").await.unwrap();
        assert_eq!(status, 200, "{body}");
        let p: serde_json::Value = serde_json::from_str(&body).unwrap();
        match p["state"].as_str().unwrap() {
            "done" => break p,
            "failed" => panic!("the resize failed: {body}\n{}", dev.output()),
            "idle" => {}
            // While it runs, another resize is refused (409). The request names the running
            // resize's own target: on a loaded machine the resize may end between this poll and
            // the request, and then the request is a resize to the size the cluster already
            // has, which changes nothing (202, done) instead of starting another one.
            "starting" | "moving" => {
                let (status, body) = call("POST", &url, token, r#"{"shards":3}"#).await.unwrap();
                match status {
                    409 => {
                        assert!(body.contains("resize_in_progress"), "{body}");
                        refused = true;
                    }
                    202 => {
                        let p: serde_json::Value = serde_json::from_str(&body).unwrap();
                        assert_eq!(
                            (p["state"].as_str(), p["from"].as_u64(), p["to"].as_u64()),
                            (Some("done"), Some(3), Some(3)),
                            "a request after the resize ended is nothing to do: {body}"
                        );
                        ended_before_a_request = true;
                    }
                    _ => panic!("a second resize while one runs: {status} {body}"),
                }
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if !ended_before_a_request {
        assert_eq!(
            (done["from"].as_u64(), done["to"].as_u64()),
            (Some(2), Some(3))
        );
    }
    // Starting shard 2's processes alone takes far longer than one poll.
    assert!(refused, "never saw the resize running");
    let out = dev.output();
    assert!(
        out.contains("the data folder holds a cluster of 2 shards; serving it at that size, then resharding it to 3 shards"),
        "{out}"
    );
    assert_eq!(record(&data).shards, 3);
    check_values(port, 3, &expected).await;
    check_one_copy_each(&data, OBJECTS + 1);

    // A resize to the size it has is nothing to do.
    let (status, stdout, stderr) = scale(&data, 3).await;
    assert!(status.success(), "{stderr}");
    assert!(
        stdout.contains("already has 3 shards; nothing to do"),
        "{stdout}"
    );
    let status = dev.stop().await;
    assert!(status.success(), "{status}");
    assert!(!data.join(CONTROL_FILE).exists(), "removed at a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stead_dev_killed_mid_resize_finishes_it_at_its_next_start() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let scratch = Scratch::new("resume");
    let data = scratch.data();
    let port = dev_base_port(3);
    let dev = Dev::start(&scratch, port, None, "dev1");
    wait_serving(&dev, 1).await;
    let expected = write_objects(port, 1, "k").await;

    // A resize 1 -> 3 through the control port; `stead dev` is killed once slots move.
    let control: ControlFile =
        serde_json::from_slice(&std::fs::read(data.join(CONTROL_FILE)).unwrap()).unwrap();
    let url = format!("http://{}{RESIZE_PATH}", control.addr);
    let (status, body) = call(
        "POST",
        &url,
        Some((CONTROL_TOKEN, &control.token)),
        r#"{"shards":3}"#,
    )
    .await
    .unwrap();
    assert_eq!(status, 202, "{body}");
    let mut moving = false;
    for _ in 0..1200 {
        let p = progress(&data).await;
        assert!(p["state"] != "failed" && p["state"] != "done", "{p}");
        if p["state"] == "moving" && p["moved"].as_u64().unwrap_or(0) > 0 {
            moving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(moving, "no slot moved within 24 s");
    let during = record(&data);
    let children: Vec<i32> = children(dev.pid()).into_iter().map(|(p, _)| p).collect();
    dev.kill_9();
    eventually("the killed stead dev's children die with it", || {
        let left = children.iter().any(|&c| alive(c));
        async move { !left }
    })
    .await;
    assert_eq!(
        during.resizing_to,
        Some(3),
        "recorded before anything moved"
    );

    // The next start (no --shards) runs all three shards and finishes the resize.
    let dev = Dev::start(&scratch, port, None, "dev2");
    eventually("the resumed resize is recorded as done", || {
        let done = std::fs::read(data.join(CLUSTER_FILE))
            .ok()
            .and_then(|raw| serde_json::from_slice::<ClusterRecord>(&raw).ok())
            .is_some_and(|r| r.shards == 3 && r.resizing_to.is_none());
        async move { done }
    })
    .await;
    let out = dev.output();
    assert!(
        out.contains("resuming the resize from 1 to 3 shards"),
        "{out}"
    );
    check_values(port, 3, &expected).await;
    check_one_copy_each(&data, OBJECTS + 1);
    assert!(dev.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_shard_folder_of_a_plain_sidecar_moves_into_shard_0_and_keeps_its_objects() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let scratch = Scratch::new("adopt");
    // A folder laid out as one sidecar (and `stead dev` before resizing) left it: `shard.sqlite`
    // and `slots/` at its root.
    let mut plain = support::Shard::start(&[]).await;
    let mut expected = BTreeMap::new();
    for i in 0..10 {
        let name = format!("p{i}");
        let (status, body) = plain
            .send(
                "POST",
                &format!("/objects/Counter/name/{name}/increment"),
                "",
            )
            .await;
        assert_eq!((status, body.trim()), (200, "1"));
        expected.insert(name, 1);
    }
    plain.stop_sidecar();
    assert!(plain.wait_sidecar_exit().success());
    let data = plain.data_dir.clone();
    assert!(data.join("shard.sqlite").exists() && data.join("slots").exists());

    let port = dev_base_port(1);
    // The default slots, as the plain sidecar had.
    let dev = Dev::start_on(&data, scratch.0.join("dev.out"), port, None, &[]);
    wait_serving(&dev, 1).await;
    check_values(port, 1, &expected).await;
    let out = dev.output();
    assert!(out.contains("into shard-0/"), "{out}");
    assert!(!data.join("shard.sqlite").exists() && !data.join("slots").exists());
    assert!(data.join("shard-0").join("shard.sqlite").exists());
    check_one_copy_each(&data, expected.len() + 1);
    assert_eq!(record(&data).shards, 1);
    assert!(dev.stop().await.success());
}
