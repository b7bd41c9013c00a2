//! Reading /proc: a process's resident memory, and which process listens on a TCP port.

use std::fs;

use anyhow::{Context, Result};

/// `VmRSS` of `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (has process {pid} exited?)"))?;
    parse_rss_kb(&status)
        .map(|kb| kb * 1024)
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

fn parse_rss_kb(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line["VmRSS:".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The command line of `pid`, arguments joined by spaces.
pub fn cmdline(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .split('\0')
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Socket inodes listening on TCP `port` (IPv4 and IPv6), from /proc/net/tcp{,6}.
fn listening_inodes(port: u16) -> Vec<u64> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| fs::read_to_string(f).ok())
        .flat_map(|t| parse_listeners(&t, port))
        .collect()
}

fn parse_listeners(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            // state 0A is LISTEN
            (local_port == port && *f.get(3)? == "0A").then(|| f.get(9)?.parse().ok())?
        })
        .collect()
}

/// The process (of this user) holding the socket that listens on `port`, with its command line.
pub fn listener_pid(port: u16) -> Result<(u32, String)> {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        anyhow::bail!("nothing listens on port {port}");
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for entry in fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue; // another user's process, or gone
        };
        for fd in fds.flatten() {
            if let Ok(link) = fs::read_link(fd.path())
                && wanted.iter().any(|w| link.as_os_str() == w.as_str())
            {
                return Ok((pid, cmdline(pid)));
            }
        }
    }
    anyhow::bail!("no process of this user holds the listener on port {port}; pass --pid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        assert_eq!(
            parse_rss_kb("Name:\tstead\nVmHWM:\t  9000 kB\nVmRSS:\t  8192 kB\n"),
            Some(8192)
        );
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:4963 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 123456 1 0000000000000000 100 0 0 10 0
   1: 0100007F:4963 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000  1000        0 123457 1 0000000000000000 20 4 30 10 -1
   2: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 99 1 0000000000000000 100 0 0 10 0";
        assert_eq!(parse_listeners(tcp, 0x4963), [123456]);
        assert_eq!(parse_listeners(tcp, 8080), [99]);
        assert!(parse_listeners(tcp, 1).is_empty());
    }

    #[test]
    fn reads_own_memory() {
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
    }
}
