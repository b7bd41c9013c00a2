//! Fault injection for tests: a seam in front of the disk at the points where a turn can fail
//! (opening or creating a database, a write, the commit, the alarm index). Always compiled in,
//! inert unless a test arms a point; storage consults it at each point and, when armed, fails
//! there the way the disk would (ENOSPC or EIO), so every error path of a turn runs in tests.

use std::path::Path;
use std::sync::{Arc, Mutex};

/// Where a fault strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// Opening an existing database, or creating a new one (after its file exists).
    Open,
    /// A write call of a turn (after it ran, as a failed write to the disk would).
    Write,
    /// The turn's COMMIT (the WAL write and its fsync).
    Commit,
    /// The alarm index write-ahead in `shard.sqlite`.
    AlarmIndex,
    /// The sync of the whole data volume (`--sync volume`), after its commits were written.
    Sync,
}

/// What the disk answers at an armed point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// ENOSPC: the volume is full. SQLite keeps the transaction; the statement fails.
    NoSpace,
    /// EIO: the device failed. SQLite rolls the whole transaction back on its own.
    Io,
}

impl Fault {
    pub fn to_io_error(self) -> std::io::Error {
        std::io::Error::from_raw_os_error(match self {
            Fault::NoSpace => libc::ENOSPC,
            Fault::Io => libc::EIO,
        })
    }
}

const POINTS: usize = 5;

/// The armed faults, shared by the storage threads and the alarm index of one shard.
#[derive(Debug, Clone, Default)]
pub struct Faults(Arc<Mutex<[Option<Fault>; POINTS]>>);

impl Faults {
    fn slot(p: FaultPoint) -> usize {
        match p {
            FaultPoint::Open => 0,
            FaultPoint::Write => 1,
            FaultPoint::Commit => 2,
            FaultPoint::AlarmIndex => 3,
            FaultPoint::Sync => 4,
        }
    }

    /// Arms `point`: every pass through it fails with `fault` until cleared.
    pub fn set(&self, point: FaultPoint, fault: Fault) {
        self.0.lock().unwrap_or_else(|p| p.into_inner())[Self::slot(point)] = Some(fault);
    }

    pub fn clear(&self, point: FaultPoint) {
        self.0.lock().unwrap_or_else(|p| p.into_inner())[Self::slot(point)] = None;
    }

    pub fn clear_all(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = [None; POINTS];
    }

    /// The fault armed at `point`, if any.
    pub fn at(&self, point: FaultPoint) -> Option<Fault> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())[Self::slot(point)]
    }
}

/// Free space below which a failed write is blamed on the volume rather than on the object.
const VOLUME_FULL_BELOW: u64 = 1 << 20;

/// Whether the volume holding `dir` is (nearly) full: SQLite reports a full disk and a database
/// at its `max_page_count` with the same code, SQLITE_FULL; the volume tells them apart.
pub fn volume_is_full(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statvfs(3) with a NUL-terminated path and a zeroed out-struct we own.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)]
    let free = (st.f_bavail as u64).saturating_mul(st.f_frsize as u64);
    free < VOLUME_FULL_BELOW
}
