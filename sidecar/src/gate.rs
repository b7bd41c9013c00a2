//! The output gate (DESIGN §3): what finished turns answer and send is held until the commit that
//! covers their writes is durable, then released in turn order — or failed, if the commit fails.
//!
//! Turns are gathered into a group while they run one after another; sealing the group hands it
//! to the commit that covers it. At most one sealed group waits for its commit while the next one
//! forms, so the app runs turn N+1 while N's commit is on its way to the disk.

use std::future::Future;

use tokio::task::JoinHandle;
use tokio::time::{Duration, Instant};

/// Finished turns waiting for their commit, in the order they ran.
pub struct OutputGate<T> {
    open: Vec<T>,
    opened_at: Option<Instant>,
    releasing: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> Default for OutputGate<T> {
    fn default() -> Self {
        Self {
            open: Vec::new(),
            opened_at: None,
            releasing: None,
        }
    }
}

impl<T: Send + 'static> OutputGate<T> {
    /// Holds a finished turn in the group being formed.
    pub fn hold(&mut self, held: T) {
        if self.open.is_empty() {
            self.opened_at = Some(Instant::now());
        }
        self.open.push(held);
    }

    /// Turns held in the group being formed.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// How long the group being formed has been open.
    pub fn age(&self) -> Duration {
        self.opened_at.map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// The turns held in the group being formed.
    pub fn held(&self) -> &[T] {
        &self.open
    }

    /// Seals the group being formed: `commit` (already on its way to storage, so that it is
    /// ordered before anything the next turns do) covers it, and `release` gets its turns with
    /// the commit's outcome once the outcome is known. Waits for the previous group's release
    /// first: groups are released in order, and one at a time waits for its commit.
    pub async fn seal<O, C, R, RF>(&mut self, commit: C, release: R)
    where
        O: Send + 'static,
        C: Future<Output = O> + Send + 'static,
        R: FnOnce(Vec<T>, O) -> RF + Send + 'static,
        RF: Future<Output = ()> + Send + 'static,
    {
        self.settle().await;
        let group = std::mem::take(&mut self.open);
        self.opened_at = None;
        self.releasing = Some(tokio::spawn(async move {
            let outcome = commit.await;
            release(group, outcome).await;
        }));
    }

    /// Waits until every sealed group has been released.
    pub async fn settle(&mut self) {
        if let Some(prev) = self.releasing.take()
            && let Err(e) = prev.await
        {
            tracing::error!(error = %e, "releasing a committed group failed");
        }
    }

    /// Whether a sealed group still waits for its commit.
    pub fn releasing(&self) -> bool {
        self.releasing.as_ref().is_some_and(|h| !h.is_finished())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::sync::oneshot;

    #[tokio::test(start_paused = true)]
    async fn a_group_is_released_only_when_its_commit_is_known_and_groups_in_order() {
        let released = Arc::new(Mutex::new(Vec::<(u32, bool)>::new()));
        let mut gate = OutputGate::<u32>::default();
        gate.hold(1);
        gate.hold(2);
        let (commit1, done1) = oneshot::channel::<bool>();
        let r = released.clone();
        gate.seal(
            async move { done1.await.unwrap_or(false) },
            move |g, ok| async move {
                r.lock().unwrap().extend(g.into_iter().map(|t| (t, ok)));
            },
        )
        .await;
        gate.hold(3);
        tokio::task::yield_now().await;
        assert!(
            released.lock().unwrap().is_empty(),
            "nothing before the commit"
        );
        assert!(gate.releasing());
        commit1.send(true).unwrap();
        let r = released.clone();
        gate.seal(async { false }, move |g, ok| async move {
            r.lock().unwrap().extend(g.into_iter().map(|t| (t, ok)));
        })
        .await;
        gate.settle().await;
        assert_eq!(
            *released.lock().unwrap(),
            [(1, true), (2, true), (3, false)]
        );
    }
}
