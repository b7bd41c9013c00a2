//! The life game in a real browser: a `stead sidecar` and the `life` app on loopback, and
//! headless Chromium (Debian's `chromium`) driven over the DevTools protocol. Two pages join the
//! same room; cells clicked and placed in the first appear in the second, which keeps seeing
//! new generations; a screenshot of the second lands in `target/life-browser.png`.
//!
//! Without Chromium the test prints `skipped: chromium not installed` and passes (CI installs
//! it: see `.ci/run`). Set `CHROMIUM=/path/to/chrome` to use another binary. The sidecar binary
//! must be built first (`cargo build --workspace --bins`, as `scripts/test.sh` does).

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::prelude::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use support::{Cleanup, start_shard};

/// The block placed by the test: a still life, so it outlives every generation.
const BLOCK: [[u16; 2]; 4] = [[20, 20], [21, 20], [20, 21], [21, 21]];
/// Side of a cell on the page's canvas, in CSS pixels.
const CELL_PX: f64 = 10.0;

fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let debian = Path::new("/usr/bin/chromium");
    if debian.exists() {
        return Some(debian.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("chromium"))
            .find(|p| p.exists())
    })
}

/// A DevTools protocol connection to the browser; page commands go through sessions
/// (`Target.attachToTarget` with `flatten`).
struct Cdp {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Cdp {
    async fn connect(url: &str) -> Cdp {
        let (ws, _) = connect_async(url).await.expect("connect to DevTools");
        Cdp { ws, next_id: 0 }
    }

    /// Sends `method` (to `session`, or to the browser) and waits for its answer, skipping
    /// events.
    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = Value::from(s);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .expect("send to DevTools");
        let answer = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(frame) = self.ws.next().await {
                let frame = frame.expect("read from DevTools");
                let Message::Text(text) = frame else { continue };
                let v: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
                if v["id"] == id {
                    return v;
                }
            }
            panic!("DevTools closed the connection");
        })
        .await
        .unwrap_or_else(|_| panic!("no answer to {method} within 30 s"));
        if let Some(e) = answer.get("error") {
            panic!("{method} failed: {e}");
        }
        answer["result"].clone()
    }

    /// Asks the browser to exit (its answer may never come: the connection closes), and waits
    /// a little for the connection to end.
    async fn close_browser(&mut self) {
        self.next_id += 1;
        let msg = json!({ "id": self.next_id, "method": "Browser.close", "params": {} });
        if self.ws.send(Message::text(msg.to_string())).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while let Some(Ok(_)) = self.ws.next().await {}
            })
            .await;
        }
    }

    /// Opens a page at `url` and returns its session.
    async fn open(&mut self, url: &str) -> String {
        let target = self
            .call(None, "Target.createTarget", json!({ "url": url }))
            .await;
        let session = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        session["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned()
    }

    /// The value of the JavaScript expression `expr` in the page.
    async fn eval(&mut self, session: &str, expr: &str) -> Value {
        let r = self
            .call(
                Some(session),
                "Runtime.evaluate",
                json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expr} threw: {e}");
        }
        r["result"]["value"].clone()
    }

    /// A real mouse click at page coordinates (`x`, `y`).
    async fn click(&mut self, session: &str, x: f64, y: f64) {
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                Some(session),
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
            )
            .await;
        }
    }

    /// Polls `expr` every 100 ms until it is `true`; panics with `what` and the page's state
    /// after `timeout`.
    async fn wait_for(&mut self, session: &str, expr: &str, timeout: Duration, what: &str) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.eval(session, expr).await == Value::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                let state = self
                    .eval(
                        session,
                        "JSON.stringify({state: window.lifeState, status: document.getElementById('status') && document.getElementById('status').textContent})",
                    )
                    .await;
                panic!("{what}: not true after {timeout:?}; page state: {state}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Starts Chromium with DevTools on a port of its choosing; returns the browser's DevTools
/// WebSocket URL.
fn start_chromium(bin: &Path, profile: &Path, cleanup: &mut Cleanup) -> String {
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-background-timer-throttling",
            "--disable-renderer-backgrounding",
            "--disable-backgrounding-occluded-windows",
            "--window-size=1000,800",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let stderr = child.stderr.take().expect("chromium's stderr");
    cleanup.children.push(child);
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads the DevTools URL, then keeps draining so that Chromium never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
            if let Some(url) = line.strip_prefix("DevTools listening on ") {
                let _ = tx.send(url.trim().to_owned());
            } else if std::env::var_os("LIFE_TEST_VERBOSE").is_some() {
                eprintln!("chromium | {line}");
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("chromium did not print its DevTools URL within 60 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cells_placed_in_one_page_appear_in_the_other() {
    let Some(chromium) = chromium() else {
        println!("skipped: chromium not installed");
        return;
    };
    let mut cleanup = Cleanup::default();
    let shard = start_shard(&mut cleanup, "browser").await;
    let (ingress, scratch) = (shard.ingress, shard.scratch.clone());
    let target_dir = shard.target_dir.clone();

    let devtools = start_chromium(&chromium, &scratch.join("profile"), &mut cleanup);
    let mut cdp = Cdp::connect(&devtools).await;
    let url = format!("http://127.0.0.1:{ingress}/?room=browser-test");
    let one = cdp.open(&url).await;
    let two = cdp.open(&url).await;
    for page in [&one, &two] {
        cdp.wait_for(
            page,
            "!!(window.lifeState && window.lifeState.connected && window.lifeState.frames > 0)",
            Duration::from_secs(30),
            "the page joined the room",
        )
        .await;
    }

    // Page one: click the four cells of a block on the canvas, then place them.
    let rect = cdp
        .eval(
            &one,
            "(() => { const r = document.getElementById('board').getBoundingClientRect(); return {left: r.left, top: r.top}; })()",
        )
        .await;
    let (left, top) = (
        rect["left"].as_f64().expect("left"),
        rect["top"].as_f64().expect("top"),
    );
    for [x, y] in BLOCK {
        cdp.click(
            &one,
            left + (f64::from(x) + 0.5) * CELL_PX,
            top + (f64::from(y) + 0.5) * CELL_PX,
        )
        .await;
    }
    assert_eq!(
        cdp.eval(&one, "document.getElementById('npending').textContent")
            .await,
        "4",
        "the four clicks marked four cells"
    );
    cdp.eval(&one, "document.getElementById('send').click()")
        .await;

    // Page two sees the block, and the room keeps ticking.
    let has_block = format!(
        "(() => {{ const s = new Set(window.lifeState.cells.map(c => c.join(','))); return {}.every(c => s.has(c.join(','))); }})()",
        json!(BLOCK)
    );
    cdp.wait_for(
        &two,
        &has_block,
        Duration::from_secs(20),
        "page two shows the block placed in page one",
    )
    .await;
    let generation = cdp.eval(&two, "window.lifeState.generation").await;
    let generation = generation.as_i64().expect("a generation");
    cdp.wait_for(
        &two,
        &format!(
            "window.lifeState.generation >= {} && {has_block}",
            generation + 2
        ),
        Duration::from_secs(20),
        "the room ticks on, and the block stays",
    )
    .await;
    cdp.wait_for(
        &one,
        &has_block,
        Duration::from_secs(5),
        "page one shows its own block",
    )
    .await;

    let shot = cdp
        .call(
            Some(&two),
            "Page.captureScreenshot",
            json!({ "format": "png" }),
        )
        .await;
    let png = BASE64_STANDARD
        .decode(shot["data"].as_str().expect("screenshot data"))
        .expect("screenshot base64");
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
    let path = target_dir.join("life-browser.png");
    std::fs::write(&path, &png).expect("write the screenshot");
    println!("screenshot: {}", path.display());

    cdp.close_browser().await;
}
