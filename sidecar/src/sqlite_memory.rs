//! Process-wide SQLite settings that keep an open object database small (issue 10: memory per
//! open object). A shard holds thousands of databases open; SQLite's defaults are sized for a
//! few.

use std::ffi::{c_int, c_void};

use rusqlite::ffi;

/// Turns off SQLite's bulk page-cache allocation per connection (by default a connection
/// allocates 20 pages, about 86 KiB, as soon as it reads its first page, and touches all of it;
/// without it pages are allocated one by one as they are used, up to `cache_size`) and the
/// default lookaside (48 KiB of small-allocation slots per connection; the object databases also
/// turn it off per connection). SQLite takes process-wide settings only before its first
/// connection, so the binary calls this first thing. Returns false when SQLite had already
/// started: its defaults then stay.
pub fn configure_process() -> bool {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DONE.get_or_init(|| {
        // SAFETY: sqlite3_config is variadic; SQLITE_CONFIG_PAGECACHE takes (void*, int, int)
        // and SQLITE_CONFIG_LOOKASIDE (int, int), passed with exactly those types. Called after
        // SQLite started, it refuses (SQLITE_MISUSE) and changes nothing.
        let pagecache = unsafe {
            ffi::sqlite3_config(
                ffi::SQLITE_CONFIG_PAGECACHE,
                std::ptr::null_mut::<c_void>(),
                0 as c_int,
                0 as c_int,
            )
        };
        // SAFETY: as above.
        let lookaside =
            unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_LOOKASIDE, 0 as c_int, 0 as c_int) };
        pagecache == ffi::SQLITE_OK && lookaside == ffi::SQLITE_OK
    })
}
