//! The turn pipeline in-process: the object host with a fake app and a fake store (the `App` and
//! `TurnStore` seams), under tokio's paused time. The fake store's commits wait until the test
//! lets them through, and fail when it says so; the fake app behaves like a protocol-2 SDK (it
//! keeps the object's state it was sent, applies its own writes, and sends them with its
//! answers).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderValue, Request, Response, StatusCode};
use stead_core::{ClassName, ObjectId, ObjectName, Ring, protocol};
use stead_sidecar::alarms::{AlarmChange, Alarms};
use stead_sidecar::app::{App, AppError};
use stead_sidecar::chain::CallChain;
use stead_sidecar::host::{Host, HostConfig};
use stead_sidecar::metrics::Metrics;
use stead_sidecar::object::{ObjectKey, ObjectRef};
use stead_sidecar::ownership::Ownership;
use stead_sidecar::storage::{Failures, State, StorageError, TurnEnd, TurnRef, TurnStore};
use stead_sidecar::turn::Turns;
use stead_sidecar::websocket::registry::Sockets;
use tokio::sync::Semaphore;

const SLOTS: u32 = 16;

type Kv = BTreeMap<String, Vec<u8>>;

/// A store with one object, whose operations run one at a time in the order they were asked
/// for, as on a storage thread: a task takes them from a queue (a commit waiting for its permit
/// holds up everything queued behind it, as an fsync does).
#[derive(Clone)]
struct FakeStore(Arc<StoreInner>);

type Job = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

struct StoreInner {
    lane: tokio::sync::mpsc::UnboundedSender<Job>,
    /// Everything kept so far, committed or not.
    view: Mutex<Kv>,
    committed: Mutex<Kv>,
    /// Commits wait for a permit.
    commits_allowed: Arc<Semaphore>,
    fail_next_commit: AtomicBool,
    commits: AtomicU64,
}

impl FakeStore {
    fn new() -> Self {
        let (lane, mut jobs) = tokio::sync::mpsc::unbounded_channel::<Job>();
        tokio::spawn(async move {
            while let Some(job) = jobs.recv().await {
                job().await;
            }
        });
        FakeStore(Arc::new(StoreInner {
            lane,
            view: Mutex::default(),
            committed: Mutex::default(),
            commits_allowed: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
            fail_next_commit: AtomicBool::new(false),
            commits: AtomicU64::new(0),
        }))
    }

    /// Queues `op` now; the future answers its result.
    fn queue<R, F>(
        &self,
        op: impl FnOnce(Arc<StoreInner>) -> F + Send + 'static,
    ) -> BoxFuture<'static, R>
    where
        R: Send + 'static,
        F: std::future::Future<Output = R> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let inner = self.0.clone();
        let job: Job = Box::new(move || {
            Box::pin(async move {
                let _ = tx.send(op(inner).await);
            })
        });
        let _ = self.0.lane.send(job);
        Box::pin(async move { rx.await.expect("the fake store's lane stopped") })
    }

    /// From now on, commits wait for [`FakeStore::allow`].
    fn hold_commits(&self) {
        let n = self.0.commits_allowed.available_permits();
        self.0.commits_allowed.forget_permits(n);
    }

    fn allow(&self, n: usize) {
        self.0.commits_allowed.add_permits(n);
    }

    fn committed(&self) -> Kv {
        self.0.committed.lock().unwrap().clone()
    }
}

impl TurnStore for FakeStore {
    fn end_turn(
        &self,
        turn: &TurnRef,
        end: TurnEnd,
    ) -> BoxFuture<'static, Result<(), StorageError>> {
        let t = turn.clone();
        self.queue(move |s| async move {
            t.active.store(0, Ordering::Release);
            if t.failures.count() != t.failures_seen {
                return Err(StorageError::EarlierCommitFailed);
            }
            if end.keep
                && let Some(w) = end.writes
            {
                if w.put.iter().any(|(k, _)| k == "boom") {
                    // A write the disk refuses: this turn, and every turn after it, fail.
                    t.failures.record(t.id);
                    return Err(StorageError::Io);
                }
                let mut view = s.view.lock().unwrap();
                if w.delete_all {
                    view.clear();
                }
                for k in w.delete {
                    view.remove(&k);
                }
                view.extend(w.put);
            }
            Ok(())
        })
    }

    fn commit(
        &self,
        _object: Arc<ObjectRef>,
        failures: Arc<Failures>,
    ) -> BoxFuture<'static, Result<Option<AlarmChange>, StorageError>> {
        self.queue(move |s| async move {
            if let Ok(p) = s.commits_allowed.acquire().await {
                p.forget();
            }
            s.commits.fetch_add(1, Ordering::Relaxed);
            if s.fail_next_commit.swap(false, Ordering::AcqRel) {
                *s.view.lock().unwrap() = s.committed.lock().unwrap().clone();
                failures.record(0);
                return Err(StorageError::Io);
            }
            *s.committed.lock().unwrap() = s.view.lock().unwrap().clone();
            Ok(None)
        })
    }

    fn alarm_time(
        &self,
        _object: &ObjectRef,
    ) -> BoxFuture<'static, Result<Option<i64>, StorageError>> {
        Box::pin(async { Ok(None) })
    }

    fn state(
        &self,
        _object: &ObjectRef,
        _max_bytes: usize,
    ) -> BoxFuture<'static, Result<Option<State>, StorageError>> {
        self.queue(|s| async move {
            let entries = s.view.lock().unwrap().clone().into_iter().collect();
            Ok(Some(State {
                entries,
                alarm: None,
            }))
        })
    }

    fn close(&self, _key: ObjectKey) -> BoxFuture<'static, Result<bool, StorageError>> {
        Box::pin(async { Ok(true) })
    }
}

/// What the fake app saw of one event.
#[derive(Debug, Clone)]
struct Seen {
    incarnation: String,
    /// The state sent with the event, if any.
    state: Option<Kv>,
}

/// A protocol-2 app: `/put/{k}/{v}` writes, `/fail/{k}/{v}` writes and answers 500,
/// `/get/{k}` reads its cache, `/hang` never answers.
#[derive(Clone, Default)]
struct FakeApp(Arc<AppInner>);

#[derive(Default)]
struct AppInner {
    seen: Mutex<Vec<Seen>>,
    /// The object's state as this app instance knows it, and the incarnation it belongs to.
    cache: Mutex<(String, Kv)>,
}

impl FakeApp {
    fn seen(&self) -> Vec<Seen> {
        self.0.seen.lock().unwrap().clone()
    }
}

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(v)
}

impl App for FakeApp {
    fn send(&self, req: Request<Bytes>) -> BoxFuture<'static, Result<Response<Bytes>, AppError>> {
        let app = self.0.clone();
        Box::pin(async move {
            let h = req.headers();
            if h[protocol::EVENT] == "hibernate" {
                return Ok(Response::new(Bytes::new()));
            }
            let incarnation = h[protocol::INCARNATION].to_str().unwrap().to_owned();
            let mut body = req.body().clone();
            let state = h.get(protocol::STATE).map(|n| {
                let n: usize = n.to_str().unwrap().parse().unwrap();
                let json: serde_json::Value = serde_json::from_slice(&body[..n]).unwrap();
                body = body.slice(n..);
                json["entries"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| {
                        let v = base64::engine::general_purpose::STANDARD
                            .decode(e["value"].as_str().unwrap())
                            .unwrap();
                        (e["key"].as_str().unwrap().to_owned(), v)
                    })
                    .collect::<Kv>()
            });
            let path = req.uri().path().to_owned();
            app.seen.lock().unwrap().push(Seen {
                incarnation: incarnation.clone(),
                state: state.clone(),
            });
            {
                let mut cache = app.cache.lock().unwrap();
                if cache.0 != incarnation {
                    *cache = (incarnation.clone(), state.unwrap_or_default());
                }
            }
            let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            let answer = |status: StatusCode, writes: Option<(String, String)>, text: String| {
                let mut body = Vec::new();
                let mut resp = Response::new(Bytes::new());
                if let Some((k, v)) = writes {
                    let w = serde_json::json!({"put": [{"key": k, "value": b64(v.as_bytes())}]})
                        .to_string();
                    resp.headers_mut()
                        .insert(protocol::WRITES, HeaderValue::from(w.len()));
                    body.extend_from_slice(w.as_bytes());
                }
                body.extend_from_slice(text.as_bytes());
                *resp.body_mut() = Bytes::from(body);
                *resp.status_mut() = status;
                resp.headers_mut().insert(
                    protocol::PROTOCOL,
                    HeaderValue::from_static(protocol::PROTOCOL_VERSION),
                );
                Ok(resp)
            };
            match parts.as_slice() {
                ["put", k, v] => {
                    app.cache
                        .lock()
                        .unwrap()
                        .1
                        .insert(k.to_string(), v.as_bytes().to_vec());
                    answer(
                        StatusCode::OK,
                        Some((k.to_string(), v.to_string())),
                        "ok".into(),
                    )
                }
                ["fail", k, v] => answer(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Some((k.to_string(), v.to_string())),
                    "failed".into(),
                ),
                ["get", k] => {
                    let cache = app.cache.lock().unwrap();
                    let v = cache
                        .1
                        .get(*k)
                        .map(|v| String::from_utf8_lossy(v).into_owned());
                    answer(StatusCode::OK, None, v.unwrap_or_else(|| "none".into()))
                }
                ["hang"] => std::future::pending().await,
                _ => answer(StatusCode::NOT_FOUND, None, "no route".into()),
            }
        })
    }
}

struct Rig {
    host: Arc<Host>,
    app: FakeApp,
    store: FakeStore,
    object: ObjectRef,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rig(config: HostConfig) -> Rig {
    let dir = std::env::temp_dir().join(format!(
        "stead-pipeline-{}-{}",
        std::process::id(),
        ObjectId::unique().unwrap().to_hex()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let metrics = Metrics::new();
    let ring = Ring::new(1, SLOTS, 1);
    let (ownership, _, _) = Ownership::load(&dir, 0, &ring).unwrap();
    let alarms = Alarms::start(&dir, SLOTS, Duration::from_secs(2), metrics.clone()).unwrap();
    let sockets = Arc::new(Sockets::new(metrics.clone(), 256 << 20));
    let app = FakeApp::default();
    let store = FakeStore::new();
    let host = Host::new(
        config,
        Arc::new(store.clone()),
        Arc::new(app.clone()),
        Arc::new(Turns::new()),
        metrics,
        alarms,
        sockets,
        ownership,
    )
    .unwrap();
    let class = ClassName::new("Counter").unwrap();
    let name = ObjectName::new("hot").unwrap();
    let object = ObjectRef::new(
        class.clone(),
        ObjectId::named(&class, &name),
        Some(name),
        SLOTS,
    );
    Rig {
        host,
        app,
        store,
        object,
        _dir: TempDir(dir),
    }
}

impl Rig {
    /// Sends a request to the object and returns the task that waits for its answer.
    fn send(&self, path: &str) -> tokio::task::JoinHandle<(StatusCode, String)> {
        let host = self.host.clone();
        let object = self.object.clone();
        let req = Request::post(path).body(Bytes::new()).unwrap();
        tokio::spawn(async move {
            let resp = host.deliver(object, req, CallChain::default()).await;
            let status = resp.status();
            (status, String::from_utf8_lossy(resp.body()).into_owned())
        })
    }

    /// Lets the host run until nothing is left to do now.
    async fn settle(&self) {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }
}

fn config() -> HostConfig {
    HostConfig::new(Duration::from_secs(30))
}

#[tokio::test(start_paused = true)]
async fn the_next_turn_runs_before_the_previous_commit_and_its_reply_waits_for_it() {
    let rig = rig(config());
    rig.store.hold_commits();
    let first = rig.send("/put/n/1");
    rig.settle().await;
    assert_eq!(rig.app.seen().len(), 1);
    assert!(
        !first.is_finished(),
        "no reply before its commit is durable"
    );

    // The first turn's commit is held: the second turn runs in the app meanwhile.
    let second = rig.send("/put/m/2");
    rig.settle().await;
    assert_eq!(
        rig.app.seen().len(),
        2,
        "turn 2 started before turn 1's commit"
    );
    assert!(!first.is_finished() && !second.is_finished());

    rig.store.allow(1);
    rig.settle().await;
    assert!(first.is_finished(), "turn 1 is released by its commit");
    assert!(
        !second.is_finished(),
        "turn 2 wrote: it waits for its own commit"
    );
    rig.store.allow(1);
    assert_eq!(first.await.unwrap(), (StatusCode::OK, "ok".into()));
    assert_eq!(second.await.unwrap(), (StatusCode::OK, "ok".into()));

    // A read-only turn that read a write whose commit is on its way waits for that commit.
    let third = rig.send("/put/k/3");
    rig.settle().await;
    let reader = rig.send("/get/k");
    rig.settle().await;
    assert_eq!(rig.app.seen().len(), 4);
    assert!(!third.is_finished() && !reader.is_finished());
    rig.store.allow(1);
    assert_eq!(third.await.unwrap().0, StatusCode::OK);
    assert_eq!(reader.await.unwrap(), (StatusCode::OK, "3".into()));
    assert_eq!(
        rig.store.0.commits.load(Ordering::Relaxed),
        3,
        "the read-only turn needed no commit of its own"
    );
}

#[tokio::test(start_paused = true)]
async fn queued_turns_share_one_commit() {
    let rig = rig(config());
    rig.store.hold_commits();
    let held = rig.send("/put/a/0");
    rig.settle().await;
    // While the first commit is held, ten turns queue and all run in the app: their ends wait
    // behind the commit, and none of their replies leaves.
    let turns: Vec<_> = (1..=10)
        .map(|i| rig.send(&format!("/put/k{i}/{i}")))
        .collect();
    rig.settle().await;
    assert_eq!(rig.app.seen().len(), 11);
    assert!(turns.iter().all(|t| !t.is_finished()));
    rig.store.allow(1 << 20);
    assert_eq!(held.await.unwrap().0, StatusCode::OK);
    for t in turns {
        assert_eq!(t.await.unwrap().0, StatusCode::OK);
    }
    let commits = rig.store.0.commits.load(Ordering::Relaxed);
    assert_eq!(commits, 2, "the ten queued turns should share one commit");
    assert_eq!(rig.store.committed().len(), 11);
}

#[tokio::test(start_paused = true)]
async fn a_failed_group_commit_fails_exactly_its_turns_and_the_next_turn_sees_none_of_their_writes()
{
    let rig = rig(config());
    assert_eq!(rig.send("/put/before/1").await.unwrap().0, StatusCode::OK);
    rig.store.hold_commits();
    let blocker = rig.send("/put/x/1");
    rig.settle().await;
    // The next three run while `blocker`'s commit is held, so they form one group; its commit
    // fails.
    let group: Vec<_> = (1..=3)
        .map(|i| rig.send(&format!("/put/g{i}/{i}")))
        .collect();
    rig.settle().await;
    rig.store.allow(1);
    assert_eq!(blocker.await.unwrap().0, StatusCode::OK);
    rig.store.0.fail_next_commit.store(true, Ordering::Release);
    rig.store.allow(1 << 20);
    for t in group {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        assert!(body.contains("storage_error"), "{body}");
    }
    let committed = rig.store.committed();
    assert_eq!(
        committed.keys().collect::<Vec<_>>(),
        ["before", "x"],
        "nothing of the failed group is durable"
    );

    // The next turn is a new incarnation, given the state without the failed group's writes.
    assert_eq!(rig.send("/get/g1").await.unwrap().1, "none");
    let seen = rig.app.seen();
    let last = seen.last().unwrap();
    let failed = &seen[seen.len() - 2];
    assert_ne!(last.incarnation, failed.incarnation);
    let state = last
        .state
        .as_ref()
        .expect("a new incarnation gets the state");
    assert_eq!(state.keys().collect::<Vec<_>>(), ["before", "x"]);
}

#[tokio::test(start_paused = true)]
async fn a_rolled_back_turn_inside_a_group_leaves_its_neighbours_writes() {
    let rig = rig(config());
    rig.store.hold_commits();
    let blocker = rig.send("/put/x/1");
    rig.settle().await;
    let a = rig.send("/put/a/1");
    let b = rig.send("/fail/b/1");
    let c = rig.send("/put/c/1");
    rig.settle().await;
    rig.store.allow(1 << 20);
    assert_eq!(blocker.await.unwrap().0, StatusCode::OK);
    assert_eq!(a.await.unwrap().0, StatusCode::OK);
    assert_eq!(
        b.await.unwrap(),
        (StatusCode::INTERNAL_SERVER_ERROR, "failed".into())
    );
    assert_eq!(c.await.unwrap().0, StatusCode::OK);
    assert_eq!(
        rig.store.committed().keys().collect::<Vec<_>>(),
        ["a", "c", "x"]
    );
    // The turn after the rollback ran as a new incarnation (the app's instance may have held
    // the rolled-back write).
    let seen = rig.app.seen();
    assert_ne!(seen[2].incarnation, seen[3].incarnation);
}

#[tokio::test(start_paused = true)]
async fn a_turn_past_the_timeout_gets_504_and_the_object_goes_on() {
    let rig = rig(config());
    let hung = rig.send("/hang");
    let next = rig.send("/put/n/1");
    // Paused time: the 30 s timeout passes as soon as nothing else can run.
    let (status, body) = hung.await.unwrap();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(body.contains("turn_timeout"), "{body}");
    assert_eq!(next.await.unwrap().0, StatusCode::OK);
    let seen = rig.app.seen();
    assert_ne!(
        seen[0].incarnation, seen[1].incarnation,
        "the timed-out turn's instance is not reused"
    );
    assert_eq!(
        rig.store.committed().get("n").map(Vec::as_slice),
        Some(&b"1"[..])
    );
}

#[tokio::test(start_paused = true)]
async fn a_group_is_committed_at_its_turn_bound() {
    let mut config = config();
    config.group_max_turns = 2;
    let rig = rig(config);
    rig.store.hold_commits();
    let blocker = rig.send("/put/x/0");
    rig.settle().await;
    let turns: Vec<_> = (1..=6)
        .map(|i| rig.send(&format!("/put/k{i}/{i}")))
        .collect();
    rig.settle().await;
    rig.store.allow(1 << 20);
    assert_eq!(blocker.await.unwrap().0, StatusCode::OK);
    for t in turns {
        assert_eq!(t.await.unwrap().0, StatusCode::OK);
    }
    // 1 + 6 turns in groups of at most 2: at least 4 commits.
    assert!(rig.store.0.commits.load(Ordering::Relaxed) >= 4);
}

#[tokio::test(start_paused = true)]
async fn a_read_only_turn_that_saw_writes_of_a_failed_commit_fails_too() {
    let rig = rig(config());
    rig.store.hold_commits();
    rig.store.0.fail_next_commit.store(true, Ordering::Release);
    let write = rig.send("/put/x/1");
    rig.settle().await;
    // Runs while the write's commit is held, and reads the write from the app's cache.
    let read = rig.send("/get/x");
    rig.settle().await;
    assert_eq!(rig.app.seen().len(), 2);
    rig.store.allow(1 << 20);
    let (status, body) = write.await.unwrap();
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    let (status, body) = read.await.unwrap();
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(body.contains("commit_failed"), "{body}");
    // The next turn starts from what is durable.
    assert_eq!(rig.send("/get/x").await.unwrap().1, "none");
}

#[tokio::test(start_paused = true)]
async fn a_turn_whose_writes_fail_in_storage_fails_the_turns_after_it_not_before() {
    let rig = rig(config());
    rig.store.hold_commits();
    let first = rig.send("/put/x/1");
    rig.settle().await;
    // These run in the app while `first`'s commit is held; their ends queue behind it.
    let before = rig.send("/put/a/1");
    let boom = rig.send("/put/boom/1");
    let reader = rig.send("/get/boom");
    let after = rig.send("/put/d/1");
    rig.settle().await;
    rig.store.allow(1 << 20);
    assert_eq!(first.await.unwrap().0, StatusCode::OK);
    assert_eq!(
        before.await.unwrap().0,
        StatusCode::OK,
        "a turn before the failure"
    );
    let (status, body) = boom.await.unwrap();
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(body.contains("storage_error"), "{body}");
    for (what, t) in [("the reader", reader), ("the writer", after)] {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{what}: {body}");
        assert!(body.contains("commit_failed"), "{what}: {body}");
    }
    assert_eq!(rig.store.committed().keys().collect::<Vec<_>>(), ["a", "x"]);
    // The next turn starts from what is durable, as a new incarnation.
    assert_eq!(rig.send("/get/boom").await.unwrap().1, "none");
}
