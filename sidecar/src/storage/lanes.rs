//! A storage thread's two queues. Turn work (calls, turn ends, commits, reads for the host) goes
//! first; background work (closing idle objects) runs when no turn work waits, and at least once
//! every [`BACKGROUND_EVERY`] turn jobs, so it is never starved. Without the split, objects that
//! go idle together (a burst of traffic, then quiet) queued hundreds of closes, each a checkpoint
//! with its syncs, ahead of a live object's commit: its turns stalled for 0.1–0.8 s
//! (`docs/benchmarks.md` §15).
//!
//! Jobs of one lane run in the order they were queued. Reordering across lanes is safe because a
//! close is only ever queued by an object's mailbox while it waits for the close, so no turn job
//! of that object can be queued behind it.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};

/// At most this many turn jobs run while a background job waits.
pub(super) const BACKGROUND_EVERY: u32 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lane {
    Turn,
    Background,
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
    /// Turn jobs taken since the last background job, while background jobs waited.
    passed: u32,
    closed: bool,
}

impl<J> Default for Lanes<J> {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                turns: VecDeque::new(),
                background: VecDeque::new(),
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
        }
        self.ready.notify_one();
        Ok(())
    }

    /// The next job, waiting for one; `None` once closed and drained.
    pub(super) fn next(&self) -> Option<J> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let background_due = s.turns.is_empty() || s.passed >= BACKGROUND_EVERY;
            if background_due && let Some(job) = s.background.pop_front() {
                s.passed = 0;
                return Some(job);
            }
            if let Some(job) = s.turns.pop_front() {
                if !s.background.is_empty() {
                    s.passed += 1;
                }
                return Some(job);
            }
            if s.closed {
                return None;
            }
            s = self.ready.wait(s).unwrap_or_else(|p| p.into_inner());
        }
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
