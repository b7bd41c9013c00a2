//! A storage thread's queues. Turn work (calls, turn ends, commits, reads for the host) goes
//! first; background work (closing idle objects) runs when no turn work waits, and at least once
//! every [`BACKGROUND_EVERY`] turn jobs, so it is never starved. Without that split, objects that
//! go idle together (a burst of traffic, then quiet) queued hundreds of closes, each a checkpoint
//! with its syncs, ahead of a live object's commit: its turns stalled for 0.1–0.8 s
//! (`docs/benchmarks.md` §15). Idle work (closing databases evicted by the cap) runs only when
//! neither waits and may starve: it is also done inline when it must be (§16).
//!
//! Jobs of one lane run in the order they were queued. Reordering across lanes is safe: a close
//! of an idle object is only ever queued by its mailbox while it waits for the close, so no turn
//! job of that object can be queued behind it; and the close of an evicted database decides what
//! to close when it runs (an object used since its eviction is no longer on the list).

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};

/// At most this many turn jobs run while a background job waits.
pub(super) const BACKGROUND_EVERY: u32 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lane {
    Turn,
    Background,
    /// Runs only when the other two are empty: work that can also be done inline if it never
    /// gets its turn (closing evicted databases).
    Idle,
}

/// The queues were closed: the storage pool is shut down.
#[derive(Debug)]
pub(super) struct Closed;

pub(super) struct Lanes<J> {
    state: Mutex<State<J>>,
    ready: Condvar,
}

struct State<J> {
    turns: VecDeque<J>,
    background: VecDeque<J>,
    idle: VecDeque<J>,
    /// Turn jobs taken since the last background job, while background jobs waited.
    passed: u32,
    closed: bool,
}

impl<J> State<J> {
    /// The job to run next, by the lanes' rule.
    fn pick(&mut self) -> Option<J> {
        let background_due = self.turns.is_empty() || self.passed >= BACKGROUND_EVERY;
        if background_due && let Some(job) = self.background.pop_front() {
            self.passed = 0;
            return Some(job);
        }
        if let Some(job) = self.turns.pop_front() {
            if !self.background.is_empty() {
                self.passed += 1;
            }
            return Some(job);
        }
        self.idle.pop_front()
    }
}

impl<J> Default for Lanes<J> {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                turns: VecDeque::new(),
                background: VecDeque::new(),
                idle: VecDeque::new(),
                passed: 0,
                closed: false,
            }),
            ready: Condvar::new(),
        }
    }
}

impl<J> Lanes<J> {
    pub(super) fn push(&self, lane: Lane, job: J) -> Result<(), Closed> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.closed {
            return Err(Closed);
        }
        match lane {
            Lane::Turn => s.turns.push_back(job),
            Lane::Background => s.background.push_back(job),
            Lane::Idle => s.idle.push_back(job),
        }
        self.ready.notify_one();
        Ok(())
    }

    /// The next job, waiting for one; `None` once closed and drained.
    pub(super) fn next(&self) -> Option<J> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(job) = s.pick() {
                return Some(job);
            }
            if s.closed {
                return None;
            }
            s = self.ready.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The next job if one is queued (tests that play the storage thread themselves).
    #[cfg(test)]
    pub(super) fn try_next(&self) -> Option<J> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).pick()
    }

    /// The next idle-lane job if one is queued, whatever else waits (tests).
    #[cfg(test)]
    pub(super) fn try_next_idle(&self) -> Option<J> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .idle
            .pop_front()
    }

    /// Turn work is queued: a job that could leave work for later would make it wait instead.
    pub(super) fn turn_work_waits(&self) -> bool {
        !self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .turns
            .is_empty()
    }

    /// Refuses new jobs; the thread runs what is queued, then stops.
    pub(super) fn close(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.closed = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(l: &Lanes<&'static str>) -> Vec<&'static str> {
        l.close();
        std::iter::from_fn(|| l.next()).collect()
    }

    #[test]
    fn turn_work_goes_before_queued_background_work() {
        let l = Lanes::default();
        for _ in 0..3 {
            l.push(Lane::Background, "close").unwrap();
        }
        l.push(Lane::Turn, "commit").unwrap();
        assert_eq!(drain(&l), ["commit", "close", "close", "close"]);
    }

    #[test]
    fn background_work_is_not_starved_by_a_stream_of_turn_work() {
        let l = Lanes::default();
        l.push(Lane::Background, "close").unwrap();
        for _ in 0..20 {
            l.push(Lane::Turn, "turn").unwrap();
        }
        let order = drain(&l);
        let at = order.iter().position(|j| *j == "close").unwrap();
        assert_eq!(at, BACKGROUND_EVERY as usize);
        assert_eq!(order.len(), 21);
    }

    #[test]
    fn idle_work_runs_only_when_nothing_else_waits() {
        let l = Lanes::default();
        l.push(Lane::Idle, "evict").unwrap();
        l.push(Lane::Background, "close").unwrap();
        for _ in 0..10 {
            l.push(Lane::Turn, "turn").unwrap();
        }
        let order = drain(&l);
        assert_eq!(order.last(), Some(&"evict"));
        assert_eq!(order.len(), 12);
        let l = Lanes::default();
        l.push(Lane::Idle, "evict").unwrap();
        assert_eq!(l.try_next(), Some("evict"));
        assert_eq!(l.try_next(), None);
    }

    #[test]
    fn each_lane_keeps_its_order_and_a_closed_pool_refuses_jobs() {
        let l = Lanes::default();
        l.push(Lane::Turn, "a").unwrap();
        l.push(Lane::Background, "x").unwrap();
        l.push(Lane::Turn, "b").unwrap();
        l.push(Lane::Background, "y").unwrap();
        assert_eq!(drain(&l), ["a", "b", "x", "y"]);
        assert!(l.push(Lane::Turn, "late").is_err());
    }

    #[test]
    fn a_waiting_thread_wakes_for_a_job_and_stops_when_closed() {
        let l = std::sync::Arc::new(Lanes::default());
        let l2 = l.clone();
        let worker = std::thread::spawn(move || std::iter::from_fn(|| l2.next()).count());
        l.push(Lane::Turn, "one").unwrap();
        l.push(Lane::Background, "two").unwrap();
        l.close();
        assert_eq!(worker.join().unwrap(), 2);
    }
}
