//! Change detection for `stead dev`'s reload: polls the modification time and size of every
//! file under a project's watched paths. Polling, not inotify: it needs nothing from the kernel
//! beyond `stat`, works the same on every file system (bind mounts, network folders), and a
//! project's source tree is small.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How often the watched paths are read.
pub const POLL_EVERY: Duration = Duration::from_millis(500);

/// Folders never watched, whatever their place: dependencies, build output, version control,
/// and `stead dev`'s own data (its SQLite files change with every request).
pub const IGNORED: [&str; 4] = ["node_modules", "target", ".git", ".stead"];

/// At most this many files are read per poll; a tree larger than that is watched in part (the
/// first ones in name order), which [`Snapshot::truncated`] says.
pub const MAX_FILES: usize = 20_000;

/// What one file looked like at one poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

/// The files under the watched paths, each with its modification time and size.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    files: BTreeMap<PathBuf, Stamp>,
    /// More than [`MAX_FILES`] files were found.
    pub truncated: bool,
}

impl Snapshot {
    /// Reads `paths` (files, or folders walked recursively without following symbolic links
    /// and without the [`IGNORED`] folders); paths under `skip` are left out too. A path that
    /// does not exist adds nothing (its creation is then a change). Blocking: call it off the
    /// async runtime's threads.
    pub fn take(paths: &[PathBuf], skip: &[PathBuf]) -> Snapshot {
        let mut snap = Snapshot::default();
        for path in paths {
            snap.add(path, skip);
        }
        snap
    }

    fn add(&mut self, path: &Path, skip: &[PathBuf]) {
        if skip.iter().any(|s| path.starts_with(s)) {
            return;
        }
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return;
        };
        if meta.is_dir() {
            let Ok(entries) = std::fs::read_dir(path) else {
                return;
            };
            let mut children: Vec<PathBuf> = entries
                .filter_map(|e| e.ok())
                .filter(|e| !IGNORED.iter().any(|i| e.file_name() == *i))
                .map(|e| e.path())
                .collect();
            children.sort();
            for child in children {
                self.add(&child, skip);
            }
        } else if self.files.len() >= MAX_FILES {
            self.truncated = true;
        } else {
            self.files.insert(
                path.to_path_buf(),
                Stamp {
                    modified: meta.modified().ok(),
                    len: meta.len(),
                },
            );
        }
    }

    /// The files added, removed or changed (in time or size) since `before`, in name order.
    pub fn changes_since(&self, before: &Snapshot) -> Vec<PathBuf> {
        let mut changed: Vec<PathBuf> = self
            .files
            .iter()
            .filter(|(path, stamp)| before.files.get(*path) != Some(stamp))
            .map(|(path, _)| path.clone())
            .collect();
        changed.extend(
            before
                .files
                .keys()
                .filter(|path| !self.files.contains_key(*path))
                .cloned(),
        );
        changed.sort();
        changed
    }

    /// How many files it holds.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// Waits for the next change under `paths` after `base`, and then until the files are quiet
/// for one more poll (an editor or `git checkout` writes several files). Returns the new
/// snapshot and what changed.
pub async fn next_change(
    paths: &[PathBuf],
    skip: &[PathBuf],
    base: &Snapshot,
) -> (Snapshot, Vec<PathBuf>) {
    let take = |paths: Vec<PathBuf>, skip: Vec<PathBuf>| async move {
        tokio::task::spawn_blocking(move || Snapshot::take(&paths, &skip))
            .await
            .unwrap_or_default()
    };
    loop {
        tokio::time::sleep(POLL_EVERY).await;
        let now = take(paths.to_vec(), skip.to_vec()).await;
        if now.changes_since(base).is_empty() {
            continue;
        }
        let mut last = now;
        loop {
            tokio::time::sleep(POLL_EVERY).await;
            let again = take(paths.to_vec(), skip.to_vec()).await;
            if again == last {
                break;
            }
            last = again;
        }
        let changed = last.changes_since(base);
        if !changed.is_empty() {
            return (last, changed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(what: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("stead-watch-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn an_edit_an_addition_and_a_removal_are_changes() {
        let dir = scratch("edits");
        std::fs::create_dir_all(dir.join("src/nested")).unwrap();
        std::fs::write(dir.join("src/main.rs"), "fn main() {}").unwrap();
        std::fs::write(dir.join("src/nested/a.rs"), "a").unwrap();
        let paths = vec![dir.join("src"), dir.join("Cargo.toml")];
        let base = Snapshot::take(&paths, &[]);
        assert_eq!(base.len(), 2);
        assert!(Snapshot::take(&paths, &[]).changes_since(&base).is_empty());

        // A different size is a change even within the file system's time granularity.
        std::fs::write(dir.join("src/main.rs"), "fn main() { println!(); }").unwrap();
        let edited = Snapshot::take(&paths, &[]);
        assert_eq!(edited.changes_since(&base), vec![dir.join("src/main.rs")]);

        // A watched file that did not exist yet appears; a removed one is a change too.
        std::fs::write(dir.join("Cargo.toml"), "[package]").unwrap();
        std::fs::remove_file(dir.join("src/nested/a.rs")).unwrap();
        let later = Snapshot::take(&paths, &[]);
        assert_eq!(
            later.changes_since(&edited),
            vec![dir.join("Cargo.toml"), dir.join("src/nested/a.rs")]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dependencies_build_output_and_the_data_folder_are_not_watched() {
        let dir = scratch("ignored");
        for sub in ["node_modules/x", "target/debug", ".stead/dev", "data"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::write(dir.join("index.js"), "export default {}").unwrap();
        let paths = vec![dir.clone()];
        let skip = vec![dir.join("data")];
        let base = Snapshot::take(&paths, &skip);
        std::fs::write(dir.join("node_modules/x/index.js"), "1").unwrap();
        std::fs::write(dir.join("target/debug/app"), "1").unwrap();
        std::fs::write(dir.join(".stead/dev/shard.sqlite"), "1").unwrap();
        std::fs::write(dir.join("data/obj.sqlite"), "1").unwrap();
        let after = Snapshot::take(&paths, &skip);
        assert!(after.changes_since(&base).is_empty(), "{after:?}");
        assert_eq!(after.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_change_is_reported_once_the_files_are_quiet() {
        let dir = scratch("quiet");
        std::fs::write(dir.join("a.txt"), "1").unwrap();
        let paths = vec![dir.clone()];
        let base = Snapshot::take(&paths, &[]);
        let writer = {
            let dir = dir.clone();
            tokio::spawn(async move {
                std::fs::write(dir.join("a.txt"), "22").unwrap();
                std::fs::write(dir.join("b.txt"), "new").unwrap();
            })
        };
        let (snap, changed) =
            tokio::time::timeout(Duration::from_secs(20), next_change(&paths, &[], &base))
                .await
                .expect("the change is seen");
        writer.await.unwrap();
        assert_eq!(changed, vec![dir.join("a.txt"), dir.join("b.txt")]);
        assert!(Snapshot::take(&paths, &[]).changes_since(&snap).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
