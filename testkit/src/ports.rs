//! Ports for the child processes a test starts to listen on.
//!
//! They are taken from `127.0.0.1:20000..32000`, below Linux's ephemeral range (32768+), so that
//! the many outgoing connections of a test can never grab one between our check and the child's
//! bind. Each test process starts at its own place in that range (spread by process id), so test
//! binaries running at the same time rarely try the same ports, and walks on from there,
//! wrapping around at the end: a process can never run out of ports because of where it
//! started, only if every port in the range is taken.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// The first port handed out.
pub const FIRST: u16 = 20_000;
/// One past the last port handed out.
pub const END: u16 = 32_000;

/// How many places a process can start from: process ids spread over that many, evenly spaced.
const STARTS: u32 = 100;

/// Every port in the range was tried and none could be bound.
#[derive(Debug, thiserror::Error)]
#[error("no free test port: every port in 127.0.0.1:{first}..{end} is taken", first = FIRST, end = END)]
pub struct PortsExhausted;

/// A port on 127.0.0.1 that nothing listens on now, and that this process has not handed out
/// recently (it walks the whole range before it comes back).
pub fn free_port() -> Result<u16, PortsExhausted> {
    static WALKED: AtomicU32 = AtomicU32::new(0);
    let span = u32::from(END - FIRST);
    let start = (std::process::id() % STARTS) * (span / STARTS);
    walk(&WALKED, start, span, |port| {
        TcpListener::bind(("127.0.0.1", port)).is_ok()
    })
}

/// Tries at most `span` consecutive places after `walked` (counted from `start`, wrapping at
/// `span`) and returns the first port `bindable` accepts.
fn walk(
    walked: &AtomicU32,
    start: u32,
    span: u32,
    bindable: impl Fn(u16) -> bool,
) -> Result<u16, PortsExhausted> {
    for _ in 0..span {
        let n = walked.fetch_add(1, Ordering::Relaxed);
        let offset = (start + n % span) % span;
        let port = FIRST + offset as u16;
        if bindable(port) {
            return Ok(port);
        }
    }
    Err(PortsExhausted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_near_the_end_wraps_around_instead_of_running_out() {
        let walked = AtomicU32::new(0);
        let span = 10;
        let got: Vec<u16> = (0..25)
            .map(|_| walk(&walked, 8, span, |_| true).unwrap())
            .collect();
        let want: Vec<u16> = (0..25).map(|i| FIRST + ((8 + i) % 10) as u16).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn taken_ports_are_skipped() {
        let walked = AtomicU32::new(0);
        let taken = |p: u16| p == FIRST + 3 || p == FIRST + 4;
        let got: Vec<u16> = (0..3)
            .map(|_| walk(&walked, 2, 10, |p| !taken(p)).unwrap())
            .collect();
        assert_eq!(got, vec![FIRST + 2, FIRST + 5, FIRST + 6]);
    }

    #[test]
    fn a_range_with_every_port_taken_is_an_error_after_one_round() {
        let walked = AtomicU32::new(0);
        let tries = std::cell::Cell::new(0);
        let result = walk(&walked, 7, 10, |_| {
            tries.set(tries.get() + 1);
            false
        });
        assert!(matches!(result, Err(PortsExhausted)));
        assert_eq!(tries.get(), 10);
    }

    #[test]
    fn real_ports_are_in_the_range_distinct_and_bindable() {
        let ports: Vec<u16> = (0..50).map(|_| free_port().unwrap()).collect();
        for &p in &ports {
            assert!((FIRST..END).contains(&p), "{p} is outside the range");
        }
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "a port was handed out twice");
        let last = *ports.last().unwrap();
        TcpListener::bind(("127.0.0.1", last)).expect("the port handed out is free");
    }
}
