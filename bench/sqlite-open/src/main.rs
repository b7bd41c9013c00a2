//! Launcher: `cargo run --release -- --driver rusqlite|sqlx --n N [--writes W] [--dir BASE]`.
//!
//! rusqlite 0.43 and sqlx 0.9 cannot be linked into one binary (both link `sqlite3` through
//! different libsqlite3-sys versions), so each driver is its own standalone crate under this
//! folder; this program builds and runs the chosen one with `cargo run --release`, passing the
//! other arguments through. The measurements are taken inside that child process.

use std::path::Path;
use std::process::{Command, exit};

fn main() {
    let mut driver = None;
    let mut rest = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == "--driver" {
            driver = it.next();
        } else if let Some(d) = a.strip_prefix("--driver=") {
            driver = Some(d.to_string());
        } else {
            rest.push(a);
        }
    }
    let driver = match driver.as_deref() {
        Some(d @ ("rusqlite" | "sqlx")) => d.to_string(),
        _ => {
            eprintln!("usage: --driver rusqlite|sqlx --n N [--writes W] [--dir BASE] [--keep]");
            exit(2)
        }
    };
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join(&driver).join("Cargo.toml");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["run", "--quiet", "--release", "--manifest-path"])
        .arg(&manifest)
        .arg("--")
        .args(&rest)
        .status()
        .expect("run cargo");
    exit(status.code().unwrap_or(1));
}
