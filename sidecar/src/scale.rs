//! `stead scale`: resizes the local cluster that a running `stead dev` serves from a data folder.
//!
//! `stead dev` listens on a loopback *control port* and writes where, with a random control
//! token, into [`CONTROL_FILE`] in its data folder (mode 0600). `stead scale` reads that file,
//! asks for the resize (`POST /v1/resize`), polls `GET /v1/resize` while printing the progress,
//! and returns when the resize is done, printing what moved. See `docs/local-cluster.md`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{Method, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

/// In the data folder of a running `stead dev`: its control address and token (mode 0600).
pub const CONTROL_FILE: &str = ".stead-dev.control";
/// The header that carries the control token.
pub const CONTROL_TOKEN: &str = "stead-dev-token";
/// The control port's resize resource.
pub const RESIZE_PATH: &str = "/v1/resize";
/// Most shards a local cluster runs (every ingress port of `stead dev` stays below its other
/// ports).
pub const MAX_SHARDS: u16 = 64;
/// How often `stead scale` asks for the progress.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// Longest a single control or admin call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, clap::Args)]
pub struct ScaleArgs {
    /// The number of shards the running `stead dev` should have.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_SHARDS)))]
    pub shards: u16,
    /// The data folder of the running `stead dev` (as given to `stead dev --data-dir`).
    #[arg(long, default_value = ".stead/dev")]
    pub data_dir: PathBuf,
}

/// What `stead dev` writes into [`CONTROL_FILE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlFile {
    /// `127.0.0.1:port` of the control port.
    pub addr: String,
    pub token: String,
    pub pid: u32,
}

/// Where a resize of the local cluster is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ResizeState {
    /// No resize since `stead dev` started.
    #[default]
    Idle,
    /// Starting the new shards' processes (grow).
    Starting,
    /// Slots and their objects are moving (the reshard on shard 0).
    Moving,
    /// Stopping the shards that no longer own slots (shrink).
    Stopping,
    Done,
    Failed,
}

impl ResizeState {
    pub fn is_running(self) -> bool {
        matches!(self, Self::Starting | Self::Moving | Self::Stopping)
    }
}

/// A resize's progress, as the control port answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ResizeProgress {
    /// Counts the resizes of this `stead dev`, so that a caller follows its own.
    pub id: u64,
    pub state: ResizeState,
    pub from: u16,
    pub to: u16,
    /// Slots moved so far, out of `total` to move.
    pub moved: u64,
    pub total: u64,
    /// Objects moved with those slots.
    #[serde(default)]
    pub objects: u64,
    /// Bytes of object databases copied.
    pub bytes: u64,
    /// Seconds since the resize began.
    pub seconds: f64,
    /// The ring epoch of the cluster (the new one once done).
    pub epoch: u64,
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    #[error(
        "no `stead dev` is running on the data folder {dir}; start one with `stead dev --data-dir {dir}` (and the same --shards) first"
    )]
    NoDev { dir: String },
    #[error(
        "the control file of `stead dev` in {dir} is unreadable ({detail}); restart `stead dev`"
    )]
    BadControlFile { dir: String, detail: String },
    #[error("{0}")]
    Refused(String),
    #[error("the resize failed: {0}")]
    Failed(String),
    #[error(
        "`stead dev` stopped answering during the resize ({0}); run `stead scale` again once it runs: the resize resumes"
    )]
    Lost(String),
}

/// A JSON answer: its status and its body.
pub(crate) struct JsonAnswer {
    pub status: StatusCode,
    pub body: serde_json::Value,
}

impl JsonAnswer {
    /// The `error.message` (else the whole body) of an error answer.
    pub fn message(&self) -> String {
        self.body
            .pointer("/error/message")
            .and_then(|m| m.as_str())
            .map_or_else(|| self.body.to_string(), str::to_owned)
    }

    pub fn code(&self) -> Option<&str> {
        self.body.pointer("/error/code").and_then(|m| m.as_str())
    }
}

/// One JSON call on loopback, bounded by [`CALL_TIMEOUT`]; `Err` says why it got no answer.
pub(crate) async fn json_call(
    method: Method,
    url: &str,
    header: (&'static str, &str),
    body: Option<&serde_json::Value>,
) -> Result<JsonAnswer, String> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    let client = Client::builder(TokioExecutor::new()).build::<_, Full<bytes::Bytes>>(connector);
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .header(header.0, header.1)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes::Bytes::from(bytes)))
        .map_err(|e| e.to_string())?;
    let call = async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let raw = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let body = serde_json::from_slice(&raw)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&raw).into()));
        Ok(JsonAnswer { status, body })
    };
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| format!("no answer within {} s", CALL_TIMEOUT.as_secs()))?
}

/// Reads the control file of the `stead dev` on `data_dir`.
async fn read_control(data_dir: &Path) -> Result<ControlFile, ScaleError> {
    let dir = data_dir.display().to_string();
    let raw = match tokio::fs::read(data_dir.join(CONTROL_FILE)).await {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ScaleError::NoDev { dir });
        }
        Err(e) => {
            return Err(ScaleError::BadControlFile {
                dir,
                detail: e.to_string(),
            });
        }
    };
    serde_json::from_slice(&raw).map_err(|e| ScaleError::BadControlFile {
        dir,
        detail: e.to_string(),
    })
}

/// A summary of a finished resize, as `stead scale` and `stead dev` print it.
pub fn summary(p: &ResizeProgress) -> String {
    format!(
        "resized from {} to {} shards: moved {} slots and {} objects ({}) in {:.1} s; ring epoch {}",
        p.from,
        p.to,
        p.moved,
        p.objects,
        human_bytes(p.bytes),
        p.seconds,
        p.epoch
    )
}

/// The progress line of a resize in state `p.state`, if it says something.
pub fn progress_line(p: &ResizeProgress) -> Option<String> {
    match p.state {
        ResizeState::Starting => Some(format!("starting shards {}..{}", p.from, p.to - 1)),
        ResizeState::Moving if p.total > 0 => Some(format!("moved {}/{} slots", p.moved, p.total)),
        ResizeState::Moving => Some("moving slots".into()),
        ResizeState::Stopping => Some(format!("stopping shards {}..{}", p.to, p.from - 1)),
        _ => None,
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

pub async fn run(args: ScaleArgs) -> Result<(), ScaleError> {
    let dir = args.data_dir.display().to_string();
    let control = read_control(&args.data_dir).await?;
    let url = format!("http://{}{RESIZE_PATH}", control.addr);
    let token = (CONTROL_TOKEN, control.token.as_str());
    let no_dev = |_| ScaleError::NoDev { dir: dir.clone() };
    let body = serde_json::json!({ "shards": args.shards });
    let answer = json_call(Method::POST, &url, token, Some(&body))
        .await
        .map_err(no_dev)?;
    match answer.status {
        StatusCode::ACCEPTED | StatusCode::OK => {}
        // A stale control file whose port something else took since.
        StatusCode::UNAUTHORIZED => return Err(ScaleError::NoDev { dir }),
        _ => return Err(ScaleError::Refused(answer.message())),
    }
    let started: ResizeProgress = serde_json::from_value(answer.body)
        .map_err(|e| ScaleError::Refused(format!("unexpected answer of `stead dev`: {e}")))?;
    if started.state == ResizeState::Done && started.from == started.to {
        println!(
            "stead scale: the cluster already has {} shards; nothing to do",
            started.to
        );
        return Ok(());
    }
    println!(
        "stead scale: resizing from {} to {} shards",
        started.from, started.to
    );
    let mut last_line = None;
    let mut misses = 0u32;
    loop {
        let answer = match json_call(Method::GET, &url, token, None).await {
            Ok(a) if a.status == StatusCode::OK => a,
            Ok(a) => return Err(ScaleError::Lost(a.message())),
            Err(e) => {
                misses += 1;
                if misses >= 20 {
                    return Err(ScaleError::Lost(e));
                }
                tokio::time::sleep(POLL_EVERY).await;
                continue;
            }
        };
        misses = 0;
        let p: ResizeProgress = serde_json::from_value(answer.body)
            .map_err(|e| ScaleError::Lost(format!("unexpected answer: {e}")))?;
        if p.id != started.id {
            return Err(ScaleError::Lost(
                "another resize replaced this one".to_owned(),
            ));
        }
        match p.state {
            ResizeState::Done => {
                println!("stead scale: {}", summary(&p));
                return Ok(());
            }
            ResizeState::Failed => {
                return Err(ScaleError::Failed(
                    p.error.unwrap_or_else(|| "no reason given".into()),
                ));
            }
            _ => {}
        }
        let line = progress_line(&p);
        if line.is_some() && line != last_line {
            if let Some(l) = &line {
                println!("stead scale: {l}");
            }
            last_line = line;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_says_what_moved() {
        let p = ResizeProgress {
            id: 1,
            state: ResizeState::Done,
            from: 1,
            to: 3,
            moved: 2731,
            total: 2731,
            objects: 40,
            bytes: 3 * 1024 * 1024 + 512 * 1024,
            seconds: 4.25,
            epoch: 2,
            error: None,
        };
        assert_eq!(
            summary(&p),
            "resized from 1 to 3 shards: moved 2731 slots and 40 objects (3.5 MiB) in 4.2 s; ring epoch 2"
        );
    }

    #[test]
    fn progress_lines_name_the_shards_and_the_slots() {
        let mut p = ResizeProgress {
            state: ResizeState::Starting,
            from: 3,
            to: 5,
            ..ResizeProgress::default()
        };
        assert_eq!(progress_line(&p).as_deref(), Some("starting shards 3..4"));
        p.state = ResizeState::Moving;
        p.moved = 812;
        p.total = 1638;
        assert_eq!(progress_line(&p).as_deref(), Some("moved 812/1638 slots"));
        let p = ResizeProgress {
            state: ResizeState::Stopping,
            from: 5,
            to: 2,
            ..ResizeProgress::default()
        };
        assert_eq!(progress_line(&p).as_deref(), Some("stopping shards 2..4"));
    }

    #[test]
    fn bytes_are_printed_in_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
    }

    #[test]
    fn the_progress_of_the_control_port_reads_back() {
        let p = ResizeProgress {
            id: 4,
            state: ResizeState::Moving,
            from: 2,
            to: 4,
            moved: 1,
            total: 9,
            objects: 2,
            bytes: 10,
            seconds: 0.5,
            epoch: 3,
            error: None,
        };
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["state"], "moving");
        assert_eq!(serde_json::from_value::<ResizeProgress>(json).unwrap(), p);
    }
}
