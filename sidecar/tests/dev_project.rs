//! `stead dev` for the user's own project, and `stead init`: a Cargo project with a
//! `DurableNamespace` manifest is built, served, watched and reloaded (a WebSocket of a reloaded
//! shard is closed with 1012); a failed build keeps the running version; `stead init --lang
//! rust` scaffolds a project whose own test passes and which `stead dev` serves. Real processes:
//! `stead dev`, cargo, the sidecar and the built app.
//!
//! The project builds share one target folder (`{CARGO_TARGET_TMPDIR}/dev-projects`) so that the
//! SDK and its dependencies compile once for all tests (the first build of a fresh checkout
//! takes a few minutes; later ones seconds), and run offline with the checkout's `Cargo.lock`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{free_port, raw_ws};

/// One `stead dev` test at a time: their port blocks must not interleave, and their builds
/// share a target folder.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a project's build may take: the first one compiles the SDK's dependencies.
const BUILD_PATIENCE: Duration = Duration::from_secs(600);

fn checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The target folder every project of these tests builds into.
fn shared_target() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("dev-projects")
}

/// A base port whose whole `stead dev` block (`p`, `p+1000` to `p+1003`) is free.
fn dev_base_port() -> u16 {
    dev_base_port_for(1)
}

/// A base port whose blocks for `shards` shards (`p+i`, `p+1000+10i` to `p+1003+10i`) are free.
fn dev_base_port_for(shards: u16) -> u16 {
    loop {
        let p = free_port();
        if !p.is_multiple_of(10) {
            continue;
        }
        let ports = (0..shards)
            .flat_map(|i| std::iter::once(i).chain((1000..=1003).map(move |d| d + 10 * i)));
        let rest_free = ports.skip(1).all(|d| {
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
        "stead-dev-project-{}-{what}-{}",
        std::process::id(),
        free_port()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Builds of test projects: the shared target folder, offline.
fn cargo_env(cmd: &mut Command) {
    cmd.env("CARGO_TARGET_DIR", shared_target())
        .env("CARGO_NET_OFFLINE", "true")
        .env_remove("RUSTFLAGS");
}

/// A running `stead dev`, its output in `{dir}/dev.log`; dropping it is `kill -9` (its
/// children die with it).
struct Dev {
    child: Child,
    log: PathBuf,
}

impl Dev {
    fn start(project: &Path, port: u16, extra: &[&str]) -> Dev {
        let log = project.with_extension("dev.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_stead"));
        cmd.arg("dev")
            .args(["--port", &port.to_string()])
            .args(extra)
            .current_dir(project)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        cargo_env(&mut cmd);
        support::die_with_test(&mut cmd);
        Dev {
            child: cmd.spawn().expect("start stead dev"),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log holds `line` `count` times (or more); fails with the log after
    /// `patience`.
    async fn wait_log(&mut self, line: &str, count: usize, patience: Duration) {
        let deadline = tokio::time::Instant::now() + patience;
        while tokio::time::Instant::now() < deadline {
            if self.log().matches(line).count() >= count {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("stead dev exited ({status}):\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "no {line:?} (x{count}) in the log of stead dev:\n{}",
            self.log()
        );
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `method path` on the ingress; `(status, body)`, or `None` when nothing answers.
async fn call(port: u16, method: &str, path: &str) -> Option<(u16, String)> {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .body(Full::default())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Waits until `method path` answers 200 with `want`.
async fn until_answer(dev: &mut Dev, port: u16, method: &str, path: &str, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        if let Some(status) = dev.child.try_wait().unwrap() {
            panic!("stead dev exited ({status}):\n{}", dev.log());
        }
        last = call(port, method, path).await;
        if last.as_ref().is_some_and(|(s, b)| *s == 200 && b == want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{method} {path} never answered 200 {want:?} (last: {last:?}); log:\n{}",
        dev.log()
    );
}

const GREETER_MAIN: &str = r#"use stead_sdk::http::{Method, StatusCode};
use stead_sdk::{App, DurableObject, ObjectInfo, Request, Response, Result, Turn, WebSocketInfo, async_trait, response};

const VERSION: &str = "v1";

struct Greeter;

#[async_trait]
impl DurableObject for Greeter {
    fn new(_object: &ObjectInfo) -> Self {
        Greeter
    }

    async fn fetch(&mut self, turn: &Turn, req: Request) -> Result<Response> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/version") => Ok(response::text(VERSION)),
            (&Method::POST, "/increment") => {
                let n = turn.storage().get::<i64>("n").await?.unwrap_or(0) + 1;
                turn.storage().put("n", &n).await?;
                Ok(response::text(n.to_string()))
            }
            _ => Ok(response::error(StatusCode::NOT_FOUND, "not_found", "no such route")),
        }
    }

    async fn websocket_connect(&mut self, _turn: &Turn, _req: Request, _ws: WebSocketInfo) -> Result<Response> {
        Ok(response::accept_websocket())
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    App::new().class::<Greeter>("Greeter").serve().await
}
"#;

/// A Cargo project outside the workspace with one class, `Greeter`, in a `stead.yaml`.
fn greeter_project(dir: &Path) {
    let sdk = checkout().join("sdk");
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"greeter\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n[dependencies]\nstead-sdk = {{ path = {sdk:?} }}\ntokio = {{ version = \"1\", features = [\"macros\", \"rt-multi-thread\"] }}\n\n[workspace]\n",
            sdk = sdk.display().to_string()
        ),
    )
    .unwrap();
    std::fs::copy(checkout().join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("src/main.rs"), GREETER_MAIN).unwrap();
    std::fs::write(
        dir.join("stead.yaml"),
        "apiVersion: stead.dev/v1alpha1\nkind: DurableNamespace\nmetadata:\n  name: greeter\nspec:\n  classes: [Greeter]\n  app:\n    image: greeter:dev\n",
    )
    .unwrap();
}

/// Replaces `from` with `to` in `file`.
fn edit(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains(from), "{from} is not in {}", file.display());
    std::fs::write(file, text.replace(from, to)).unwrap();
}

/// Waits (at most `patience`) until the reload closes `ws`, checks that it closed with 1012, and
/// answers the Close as a browser does, so the old sidecar need not wait for it.
async fn closed_by_the_reload(ws: &mut raw_ws::RawWs, dev: &Dev, patience: Duration) {
    let (_, code) = tokio::time::timeout(patience, ws.read_until_close())
        .await
        .expect("the socket is closed by the reload");
    assert_eq!(code, Some(1012), "log:\n{}", dev.log());
    let _ = ws
        .send(&raw_ws::frame(
            true,
            0,
            raw_ws::OP_CLOSE,
            &1012u16.to_be_bytes(),
            true,
        ))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cargo_project_is_built_served_and_reloaded_on_change() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let root = temp_dir("cargo");
    let project = root.join("greeter");
    std::fs::create_dir_all(&project).unwrap();
    greeter_project(&project);
    let main = project.join("src/main.rs");
    let port = dev_base_port();
    let mut dev = Dev::start(&project, port, &[]);
    dev.wait_log("stead dev: running the Cargo project", 1, BUILD_PATIENCE)
        .await;
    // The classes come from the manifest; the data lives in the project's folder.
    until_answer(
        &mut dev,
        port,
        "GET",
        "/objects/Greeter/name/a/version",
        "v1",
    )
    .await;
    until_answer(
        &mut dev,
        port,
        "POST",
        "/objects/Greeter/name/a/increment",
        "1",
    )
    .await;
    assert!(project.join(".stead/dev/shard-0/shard.sqlite").exists());

    let mut ws = raw_ws::connect(port, "/objects/Greeter/name/a/ws", raw_ws::GOOD_KEY)
        .await
        .expect("the Greeter accepts a WebSocket");

    // A change to the source: rebuilt, the shard restarted, the socket closed with 1012.
    edit(&main, "\"v1\"", "\"v2\"");
    closed_by_the_reload(&mut ws, &dev, BUILD_PATIENCE).await;
    until_answer(
        &mut dev,
        port,
        "GET",
        "/objects/Greeter/name/a/version",
        "v2",
    )
    .await;
    // The object's data outlives the reload.
    until_answer(
        &mut dev,
        port,
        "POST",
        "/objects/Greeter/name/a/increment",
        "2",
    )
    .await;
    assert!(
        dev.log().contains("src/main.rs changed; reloading"),
        "{}",
        dev.log()
    );

    // A change that does not build: the running version keeps serving.
    edit(&main, "\"v2\"", "\"v3\" +");
    dev.wait_log("still running the previous version", 1, BUILD_PATIENCE)
        .await;
    until_answer(
        &mut dev,
        port,
        "GET",
        "/objects/Greeter/name/a/version",
        "v2",
    )
    .await;
    // Fixed: the next change reloads.
    edit(&main, "\"v3\" +", "\"v3\"");
    until_answer(
        &mut dev,
        port,
        "GET",
        "/objects/Greeter/name/a/version",
        "v3",
    )
    .await;
    // Two reloads in all: the failed build restarted nothing.
    dev.wait_log("stead dev: reloaded", 2, Duration::from_secs(30))
        .await;
    assert_eq!(
        dev.log().matches("stead dev: reloaded").count(),
        2,
        "{}",
        dev.log()
    );
    drop(dev);
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_of_several_shards_closes_the_sockets_of_every_shard_with_1012() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let root = temp_dir("cargo-shards");
    let project = root.join("greeter");
    std::fs::create_dir_all(&project).unwrap();
    greeter_project(&project);
    let main = project.join("src/main.rs");
    let port = dev_base_port_for(2);
    let mut dev = Dev::start(&project, port, &["--shards", "2"]);
    dev.wait_log("on 2 shards", 1, BUILD_PATIENCE).await;
    // Eight objects: with two shards, both own some of them (each shard's database files show
    // which).
    let names: Vec<String> = (0..8).map(|i| format!("o{i}")).collect();
    for name in &names {
        let path = format!("/objects/Greeter/name/{name}/increment");
        until_answer(&mut dev, port, "POST", &path, "1").await;
    }
    let owners: Vec<usize> = (0..2)
        .map(|i| {
            let slots = project.join(format!(".stead/dev/shard-{i}/slots"));
            walk_count(&slots, "sqlite")
        })
        .collect();
    assert!(
        owners.iter().all(|&n| n > 0),
        "objects per shard: {owners:?}"
    );
    let mut sockets = vec![];
    for name in &names {
        let path = format!("/objects/Greeter/name/{name}/ws");
        sockets.push(
            raw_ws::connect(port + 1, &path, raw_ws::GOOD_KEY)
                .await
                .expect("the Greeter accepts a WebSocket"),
        );
    }

    edit(&main, "\"v1\"", "\"v2\"");
    for ws in &mut sockets {
        closed_by_the_reload(ws, &dev, BUILD_PATIENCE).await;
    }
    dev.wait_log("stead dev: reloaded shard", 2, Duration::from_secs(60))
        .await;
    for name in &names {
        for ingress in [port, port + 1] {
            let path = format!("/objects/Greeter/name/{name}/version");
            until_answer(&mut dev, ingress, "GET", &path, "v2").await;
        }
        let path = format!("/objects/Greeter/name/{name}/increment");
        until_answer(&mut dev, port, "POST", &path, "2").await;
    }
    drop(dev);
    let _ = std::fs::remove_dir_all(&root);
}

/// Files ending in `.{ext}` under `dir`, at any depth.
fn walk_count(dir: &Path, ext: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                walk_count(&path, ext)
            } else {
                usize::from(path.extension().is_some_and(|x| x == ext))
            }
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stead_dev_in_a_folder_without_a_project_says_how_to_make_one() {
    let root = temp_dir("empty");
    let out = Command::new(env!("CARGO_BIN_EXE_stead"))
        .args(["dev", "--project"])
        .arg(&root)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no project in"), "{stderr}");
    assert!(stderr.contains("`stead init` makes one"), "{stderr}");
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_project_with_an_sdk_not_installed_asks_for_npm_install() {
    let root = temp_dir("npm");
    let project = root.join("app");
    let sdk = root.join("sdk");
    std::fs::create_dir_all(project.join("src")).unwrap();
    std::fs::create_dir_all(sdk.join("bin")).unwrap();
    std::fs::write(sdk.join("bin/stead-workers.mjs"), "process.exit(3)").unwrap();
    std::fs::write(project.join("wrangler.toml"), "main = \"src/index.js\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_stead"))
        .arg("dev")
        .current_dir(&project)
        .env("STEAD_WORKERS_SDK", &sdk)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cd {} && npm install", sdk.display())),
        "{stderr}"
    );
    // Nothing was installed on the user's behalf.
    assert!(!sdk.join("node_modules").exists());
    let _ = std::fs::remove_dir_all(&root);
}

/// `stead init` with `args` in `dir`; its output.
fn init(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_stead"))
        .arg("init")
        .args(args)
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "stead init failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_project_from_stead_init_passes_its_test_and_runs_under_stead_dev() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let root = temp_dir("init-rust");
    let project = root.join("My Counter");
    let said = init(&project, &["--lang", "rust"]);
    assert!(said.contains("created my-counter"), "{said}");
    for file in [
        "Cargo.toml",
        "Cargo.lock",
        "src/main.rs",
        "Dockerfile",
        "k8s/my-counter.yaml",
    ] {
        assert!(project.join(file).is_file(), "{file} is missing: {said}");
    }
    // Its own test, against the real sidecar.
    let mut test = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    test.arg("test")
        .current_dir(&project)
        .env("STEAD_BIN", env!("CARGO_BIN_EXE_stead"))
        .stdin(Stdio::null());
    cargo_env(&mut test);
    support::die_with_test(&mut test);
    let out = tokio::task::spawn_blocking(move || test.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo test of the scaffold failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("a_counter_keeps_its_count ... ok"),
        "{stdout}"
    );

    // And `stead dev` serves it, with the class of its manifest.
    let port = dev_base_port();
    let mut dev = Dev::start(&project, port, &[]);
    dev.wait_log("stead dev: running the Cargo project", 1, BUILD_PATIENCE)
        .await;
    until_answer(
        &mut dev,
        port,
        "POST",
        "/objects/Counter/name/x/increment",
        "1",
    )
    .await;
    until_answer(&mut dev, port, "GET", "/objects/Counter/name/x/value", "1").await;
    drop(dev);
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stead_init_never_writes_into_a_folder_that_holds_files() {
    let root = temp_dir("init-full");
    std::fs::write(root.join("notes.txt"), "mine").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_stead"))
        .args(["init", "--lang", "ts"])
        .arg(&root)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already holds files"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(&root).unwrap().collect();
    assert_eq!(left.len(), 1, "nothing was added");
    let _ = std::fs::remove_dir_all(&root);
}

const WORKERS_ENTRY: &str = r#"import { DurableObject } from "cloudflare:workers";

const VERSION: string = "v1";

export class Greeter extends DurableObject {
  async fetch(request: Request): Promise<Response> {
    if (request.headers.get("Upgrade") === "websocket") {
      const pair = new WebSocketPair();
      this.ctx.acceptWebSocket(pair[1]);
      return new Response(null, { status: 101, webSocket: pair[0] });
    }
    const { pathname } = new URL(request.url);
    if (pathname === "/version") {
      return new Response(`${(this.env as any).GREETING} ${VERSION}`);
    }
    if (pathname === "/increment") {
      const n = ((await this.ctx.storage.get<number>("n")) ?? 0) + 1;
      await this.ctx.storage.put("n", n);
      return new Response(String(n));
    }
    return new Response("no such route", { status: 404 });
  }
}

export default {
  async fetch(request: Request, env: any): Promise<Response> {
    const n = await env.GREETER.getByName("front").fetch("http://do/increment");
    return new Response(`front ${await n.text()}`);
  },
};
"#;

/// A Workers project: a wrangler.toml with a var and one Durable Object binding, and a
/// TypeScript entry (bundled by the runner with esbuild).
fn workers_project(dir: &Path) {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("wrangler.toml"),
        "name = \"greeter\"\nmain = \"src/index.ts\"\n\n[vars]\nGREETING = \"hello\"\n\n[[durable_objects.bindings]]\nname = \"GREETER\"\nclass_name = \"Greeter\"\n",
    )
    .unwrap();
    std::fs::write(dir.join("src/index.ts"), WORKERS_ENTRY).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_project_is_served_and_reloaded_on_change() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let sdk = checkout().join("sdk-ts");
    if std::env::var_os("STEAD_WORKERS_SDK").is_none() {
        assert!(
            sdk.join("node_modules").is_dir(),
            "run `npm ci` in {} first",
            sdk.display()
        );
    }
    let root = temp_dir("workers");
    let project = root.join("greeter");
    workers_project(&project);
    let main = project.join("src/index.ts");
    let port = dev_base_port();
    let mut dev = Dev::start(&project, port, &[]);
    dev.wait_log(
        "stead dev: running the Workers project",
        1,
        Duration::from_secs(60),
    )
    .await;
    // The class and the var come from wrangler.toml.
    until_answer(
        &mut dev,
        port,
        "GET",
        "/objects/Greeter/name/a/version",
        "hello v1",
    )
    .await;
    until_answer(
        &mut dev,
        port,
        "POST",
        "/objects/Greeter/name/a/increment",
        "1",
    )
    .await;
    // The Worker in front calls the object through its binding.
    until_answer(&mut dev, port, "GET", "/", "front 1").await;

    let mut ws = raw_ws::connect(port, "/objects/Greeter/name/a/ws", raw_ws::GOOD_KEY)
        .await
        .expect("the Greeter accepts a WebSocket");
    edit(&main, "\"v1\"", "\"v2\"");
    closed_by_the_reload(&mut ws, &dev, Duration::from_secs(60)).await;
    until_answer(
        &mut dev,
        port,
        "GET",
        "/objects/Greeter/name/a/version",
        "hello v2",
    )
    .await;
    until_answer(
        &mut dev,
        port,
        "POST",
        "/objects/Greeter/name/a/increment",
        "2",
    )
    .await;

    // A bundling error: the running version keeps serving.
    edit(&main, "\"v2\"", "\"v3\" +");
    dev.wait_log(
        "still running the previous version",
        1,
        Duration::from_secs(60),
    )
    .await;
    until_answer(
        &mut dev,
        port,
        "GET",
        "/objects/Greeter/name/a/version",
        "hello v2",
    )
    .await;
    // A change to the config reloads too.
    edit(&main, "\"v3\" +", "\"v3\"");
    edit(&project.join("wrangler.toml"), "\"hello\"", "\"hi\"");
    until_answer(
        &mut dev,
        port,
        "GET",
        "/objects/Greeter/name/a/version",
        "hi v3",
    )
    .await;
    drop(dev);
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typescript_project_from_stead_init_passes_its_test() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let root = temp_dir("init-ts");
    let project = root.join("hello");
    let said = init(&project, &["--lang", "ts"]);
    assert!(said.contains("created hello"), "{said}");
    for file in [
        "package.json",
        "wrangler.toml",
        "src/index.ts",
        "test/counter.test.mjs",
    ] {
        assert!(project.join(file).is_file(), "{file} is missing: {said}");
    }
    // From a checkout, the package depends on its sdk-ts/ (or on the SDK the test is told of).
    let package = project.join("package.json");
    let checkout_sdk = format!("file:{}", checkout().join("sdk-ts").display());
    if let Some(sdk) = std::env::var_os("STEAD_WORKERS_SDK") {
        let sdk = format!("file:{}", PathBuf::from(sdk).display());
        edit(&package, &checkout_sdk, &sdk);
    } else {
        assert!(
            std::fs::read_to_string(&package)
                .unwrap()
                .contains(&checkout_sdk)
        );
    }
    let npm = |args: &[&str]| {
        let mut cmd = Command::new("npm");
        cmd.args(args)
            .current_dir(&project)
            .env("STEAD_BIN", env!("CARGO_BIN_EXE_stead"))
            .env_remove("STEAD_WORKERS_SDK")
            .stdin(Stdio::null());
        support::die_with_test(&mut cmd);
        cmd
    };
    // A `file:` dependency: nothing comes from the registry.
    let mut install = npm(&["install", "--offline", "--no-audit", "--no-fund"]);
    let out = tokio::task::spawn_blocking(move || install.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "npm install: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut test = npm(&["test"]);
    let out = tokio::task::spawn_blocking(move || test.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "npm test of the scaffold failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("# pass 1"), "{stdout}");
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stead_init_in_a_workers_project_adds_an_image_and_a_manifest_of_its_classes() {
    let root = temp_dir("init-workers");
    let project = root.join("greeter");
    workers_project(&project);
    std::fs::write(project.join(".dockerignore"), "mine\n").unwrap();
    let said = init(&project, &[]);
    assert!(said.contains("(classes Greeter)"), "{said}");
    assert!(said.contains(".dockerignore (already there"), "{said}");
    assert!(said.contains("npm install @stead/workers"), "{said}");
    let manifest = std::fs::read_to_string(project.join("k8s/greeter.yaml")).unwrap();
    assert_eq!(
        stead_sidecar::project::manifest_classes(&manifest).unwrap(),
        Some(vec!["Greeter".to_owned()])
    );
    let dockerfile = std::fs::read_to_string(project.join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("\"--config\", \"wrangler.toml\""),
        "{dockerfile}"
    );
    // Nothing of the project was changed.
    assert_eq!(
        std::fs::read_to_string(project.join(".dockerignore")).unwrap(),
        "mine\n"
    );
    assert_eq!(
        std::fs::read_to_string(project.join("src/index.ts")).unwrap(),
        WORKERS_ENTRY
    );
    let _ = std::fs::remove_dir_all(&root);
}
