//! Which slots this shard serves. Authority is the data: the owned slots are recorded in
//! `{data}/shard.sqlite`, and a slot is served only while it is recorded there. The ring is only
//! the routing table. An empty shard takes the slots the ring gives it on first start.

use std::path::Path;

use rusqlite::{Connection, params};
use stead_core::{Ring, Slot};

#[derive(Debug, thiserror::Error)]
pub enum OwnershipError {
    #[error("shard.sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot create the data folder: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "this shard's data was created with {recorded} slots but --slots is {configured}; slots cannot change"
    )]
    SlotsChanged { recorded: u32, configured: u32 },
    #[error(
        "this shard's data belongs to shard {recorded}, not {configured}; give each shard its own data folder"
    )]
    OrdinalChanged { recorded: u32, configured: u32 },
    #[error(
        "this shard owns {owned} slots but the ring gives it {assigned} ({differ} differ): the shard count changed, which needs slot migration; this version cannot move slots, so it refuses to start rather than let two shards serve one object"
    )]
    RingDisagrees {
        owned: usize,
        assigned: usize,
        differ: usize,
    },
}

/// The slots this shard owns, loaded once at start.
#[derive(Debug, Clone)]
pub struct Ownership {
    owned: Vec<bool>,
}

impl Ownership {
    /// Opens (or initialises) `{data}/shard.sqlite`. Blocking: call at start-up, off the runtime.
    pub fn load(data_dir: &Path, me: u32, ring: &Ring) -> Result<Self, OwnershipError> {
        std::fs::create_dir_all(data_dir)?;
        let mut conn = Connection::open(data_dir.join("shard.sqlite"))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS shard_meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS owned_slots(slot INTEGER PRIMARY KEY);",
        )?;
        let get = |conn: &Connection, key: &str| -> Result<Option<u32>, rusqlite::Error> {
            match conn.query_row(
                "SELECT value FROM shard_meta WHERE key = ?1",
                params![key],
                |r| r.get(0),
            ) {
                Ok(v) => Ok(Some(v)),
                Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
                Err(e) => Err(e),
            }
        };
        let slots = ring.slots();
        match get(&conn, "slots")? {
            None => {
                let tx = conn.transaction()?;
                tx.execute(
                    "INSERT INTO shard_meta(key, value) VALUES ('slots', ?1), ('ordinal', ?2)",
                    params![slots, me],
                )?;
                {
                    let mut ins = tx.prepare("INSERT INTO owned_slots(slot) VALUES (?1)")?;
                    for s in ring.slots_of(me) {
                        ins.execute(params![s.0])?;
                    }
                }
                tx.commit()?;
            }
            Some(recorded) if recorded != slots => {
                return Err(OwnershipError::SlotsChanged {
                    recorded,
                    configured: slots,
                });
            }
            Some(_) => {}
        }
        if let Some(recorded) = get(&conn, "ordinal")?
            && recorded != me
        {
            return Err(OwnershipError::OrdinalChanged {
                recorded,
                configured: me,
            });
        }
        let mut owned = vec![false; slots as usize];
        let mut stmt = conn.prepare("SELECT slot FROM owned_slots")?;
        for s in stmt.query_map([], |r| r.get::<_, u32>(0))? {
            if let Some(o) = owned.get_mut(s? as usize) {
                *o = true;
            }
        }
        let assigned: Vec<bool> = (0..slots).map(|s| ring.owner(Slot(s)) == me).collect();
        let differ = owned.iter().zip(&assigned).filter(|(a, b)| a != b).count();
        if differ > 0 {
            return Err(OwnershipError::RingDisagrees {
                owned: owned.iter().filter(|o| **o).count(),
                assigned: assigned.iter().filter(|o| **o).count(),
                differ,
            });
        }
        Ok(Self { owned })
    }

    pub fn owns(&self, slot: Slot) -> bool {
        self.owned.get(slot.0 as usize).copied().unwrap_or(false)
    }

    pub fn count(&self) -> usize {
        self.owned.iter().filter(|o| **o).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "stead-own-{}-{}",
            std::process::id(),
            stead_core::ObjectId::unique().unwrap().to_hex()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn an_empty_shard_takes_its_ring_slots_and_keeps_them() {
        let dir = tempdir();
        let ring = Ring::new(1, 256, 3);
        let o = Ownership::load(&dir, 1, &ring).unwrap();
        assert_eq!(o.count(), ring.slots_of(1).count());
        for s in 0..256 {
            assert_eq!(o.owns(Slot(s)), ring.owner(Slot(s)) == 1);
        }
        let again = Ownership::load(&dir, 1, &ring).unwrap();
        assert_eq!(again.count(), o.count());
    }

    #[test]
    fn a_changed_shard_count_or_ordinal_or_slot_count_is_refused() {
        let dir = tempdir();
        Ownership::load(&dir, 0, &Ring::new(1, 256, 1)).unwrap();
        assert!(matches!(
            Ownership::load(&dir, 0, &Ring::new(1, 256, 3)),
            Err(OwnershipError::RingDisagrees { .. })
        ));
        assert!(matches!(
            Ownership::load(&dir, 1, &Ring::new(1, 256, 2)),
            Err(OwnershipError::OrdinalChanged { .. })
        ));
        assert!(matches!(
            Ownership::load(&dir, 0, &Ring::new(1, 128, 1)),
            Err(OwnershipError::SlotsChanged { .. })
        ));
    }
}
