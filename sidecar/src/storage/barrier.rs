//! The volume barrier (`--sync volume`): strict commits are written without an fsync of their
//! own, and one `syncfs(2)` of the data volume makes every commit written before it durable. A
//! commit's answer (and so every reply its turns hold) waits for the first sync that starts after
//! the commit returned; commits that finish while a sync runs share the next one. With many
//! objects committing at once this replaces one fsync per object (two for a new one) by one sync
//! per batch: see `docs/decisions/0012-volume-sync.md`.
//!
//! One thread runs the syncs, so at most one is in flight; the batch is whatever waited meanwhile
//! (unbounded, but each waiter is a small closure of a commit whose turns are already held).
//!
//! A failed sync fails its batch and *every later one*: after a failed writeback the kernel may
//! have dropped the data it could not write, and what the page cache still shows is not what the
//! disk holds. The shard then refuses every commit, and `/readyz` and `/healthz` report it, until
//! the process restarts and reads the objects from the disk again.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use super::StorageError;
use crate::faults::{FaultPoint, Faults};
use crate::metrics::Metrics;

/// What waits for the next sync: called once with its outcome, on the sync thread.
pub type Waiter = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

/// The handle the storage threads share. The sync thread stops once every handle is dropped.
#[derive(Clone)]
pub struct VolumeBarrier {
    inner: Arc<Inner>,
    _owner: Arc<Owner>,
}

struct Inner {
    queue: Mutex<Queue>,
    wake: Condvar,
    failed: AtomicBool,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiter>,
    stopped: bool,
}

/// Stops the sync thread when the last handle goes.
struct Owner(Arc<Inner>);

impl Drop for Owner {
    fn drop(&mut self) {
        let mut q = self.0.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.stopped = true;
        self.0.wake.notify_all();
    }
}

impl VolumeBarrier {
    /// Starts the sync thread for the volume that holds `data_dir`.
    pub fn start(data_dir: &Path, faults: Faults, metrics: Metrics) -> Result<Self, StorageError> {
        let volume = File::open(data_dir)?;
        let inner = Arc::new(Inner {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            failed: AtomicBool::new(false),
        });
        let thread_inner = inner.clone();
        std::thread::Builder::new()
            .name("stead-sync".into())
            .spawn(move || run(&thread_inner, &volume, &faults, &metrics))?;
        Ok(Self {
            _owner: Arc::new(Owner(inner.clone())),
            inner,
        })
    }

    /// Calls `waiter` once a sync that started after this call has finished (at once, with the
    /// error, once a sync has failed).
    pub fn after_sync(&self, waiter: Waiter) {
        if self.failed() {
            waiter(Err(StorageError::VolumeFailed));
            return;
        }
        let mut q = self.inner.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.waiting.push(waiter);
        self.inner.wake.notify_one();
    }

    /// A sync failed: nothing written since can be trusted to be on the disk.
    pub fn failed(&self) -> bool {
        self.inner.failed.load(Ordering::SeqCst)
    }
}

fn run(inner: &Inner, volume: &File, faults: &Faults, metrics: &Metrics) {
    loop {
        let batch = {
            let mut q = inner.queue.lock().unwrap_or_else(|p| p.into_inner());
            while q.waiting.is_empty() && !q.stopped {
                q = inner.wake.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            if q.waiting.is_empty() {
                return;
            }
            std::mem::take(&mut q.waiting)
        };
        // Once failed, nothing is synced any more: the waiters that were already queued fail.
        let synced = !inner.failed.load(Ordering::SeqCst) && {
            let started = Instant::now();
            let synced = sync_volume(volume, faults);
            metrics
                .volume_sync_seconds
                .observe(started.elapsed().as_secs_f64());
            synced
        };
        if synced {
            metrics.volume_synced_commits.inc_by(batch.len() as u64);
        } else if !inner.failed.swap(true, Ordering::SeqCst) {
            tracing::error!(
                commits = batch.len(),
                "syncing the data volume failed: its commits fail, and the shard refuses every commit until it restarts"
            );
        }
        for waiter in batch {
            waiter(if synced {
                Ok(())
            } else {
                Err(StorageError::VolumeFailed)
            });
        }
    }
}

/// Syncs the filesystem that holds `volume`; false (the error logged) if it failed.
fn sync_volume(volume: &File, faults: &Faults) -> bool {
    if let Some(f) = faults.at(FaultPoint::Sync) {
        tracing::error!(error = %f.to_io_error(), "injected fault at the volume sync");
        return false;
    }
    // SAFETY: `volume` is an open descriptor for the whole call; syncfs only reads it.
    if unsafe { libc::syncfs(volume.as_raw_fd()) } != 0 {
        tracing::error!(error = %std::io::Error::last_os_error(), "syncfs of the data volume");
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::Fault;
    use std::sync::mpsc;

    fn barrier(faults: &Faults) -> (std::path::PathBuf, VolumeBarrier) {
        let dir = std::env::temp_dir().join(format!(
            "stead-barrier-test-{}-{}",
            std::process::id(),
            stead_core::ObjectId::unique().unwrap().to_hex()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let b = VolumeBarrier::start(&dir, faults.clone(), Metrics::new()).unwrap();
        (dir, b)
    }

    fn wait(b: &VolumeBarrier) -> mpsc::Receiver<Result<(), StorageError>> {
        let (tx, rx) = mpsc::channel();
        b.after_sync(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        rx
    }

    #[test]
    fn every_waiter_is_answered_after_a_sync() {
        let faults = Faults::default();
        let (_dir, b) = barrier(&faults);
        let waits: Vec<_> = (0..50).map(|_| wait(&b)).collect();
        for w in waits {
            assert!(w.recv().unwrap().is_ok());
        }
        assert!(!b.failed());
    }

    #[test]
    fn a_failed_sync_fails_its_batch_and_every_later_commit() {
        let faults = Faults::default();
        let (_dir, b) = barrier(&faults);
        assert!(wait(&b).recv().unwrap().is_ok());
        faults.set(FaultPoint::Sync, Fault::Io);
        assert!(matches!(
            wait(&b).recv().unwrap(),
            Err(StorageError::VolumeFailed)
        ));
        assert!(b.failed());
        faults.clear_all();
        // The disk is in doubt from now on: clearing the fault does not make it trusted again.
        assert!(matches!(
            wait(&b).recv().unwrap(),
            Err(StorageError::VolumeFailed)
        ));
    }

    #[test]
    fn the_sync_thread_stops_with_the_last_handle() {
        let faults = Faults::default();
        let (_dir, b) = barrier(&faults);
        let weak = Arc::downgrade(&b.inner);
        drop(b);
        // The thread holds `inner` until it sees the stop; it must let go of it.
        for _ in 0..500 {
            if weak.upgrade().is_none() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the sync thread still runs after the last handle was dropped");
    }
}
