//! The ring: which shard owns each slot, by rendezvous (highest random weight) hashing.
//!
//! Each slot goes to the shard with the highest weight `SHA-256("stead.ring.v1" ‖ slot ‖ shard)`
//! (big-endian u32s, first 8 bytes as u64). Growing from n to n+1 shards moves exactly the slots
//! whose new highest weight is the new shard's: about 1/(n+1) of them, all to the new shard.
//! Operator and sidecar compute the same function, so the ring never has to be shipped slot by
//! slot, only as (shards, epoch).

use sha2::{Digest, Sha256};

use crate::id::Slot;

/// A published ring: its epoch and the owner ordinal of every slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    pub epoch: u64,
    pub shards: u32,
    owners: Vec<u32>,
}

impl Ring {
    /// The ring of `shards` shards over `slots` slots.
    pub fn new(epoch: u64, slots: u32, shards: u32) -> Self {
        Self {
            epoch,
            shards: shards.max(1),
            owners: ring(slots, shards),
        }
    }

    pub fn slots(&self) -> u32 {
        self.owners.len() as u32
    }

    /// The shard that owns `slot` in this ring.
    pub fn owner(&self, slot: Slot) -> u32 {
        self.owners.get(slot.0 as usize).copied().unwrap_or(0)
    }

    /// The slots this ring gives to `shard`.
    pub fn slots_of(&self, shard: u32) -> impl Iterator<Item = Slot> + '_ {
        self.owners
            .iter()
            .enumerate()
            .filter(move |(_, o)| **o == shard)
            .map(|(s, _)| Slot(s as u32))
    }
}

fn weight(slot: u32, shard: u32) -> u64 {
    let mut h = Sha256::new();
    h.update(b"stead.ring.v1");
    h.update(slot.to_be_bytes());
    h.update(shard.to_be_bytes());
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_be_bytes(first)
}

/// The owner ordinal of each slot `0..slots` among shards `0..shards`.
pub fn ring(slots: u32, shards: u32) -> Vec<u32> {
    let shards = shards.max(1);
    (0..slots)
        .map(|slot| {
            (0..shards)
                .max_by_key(|&shard| (weight(slot, shard), std::cmp::Reverse(shard)))
                .unwrap_or(0)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slot_has_exactly_one_owner_within_range() {
        for shards in 1..=7 {
            let r = ring(4096, shards);
            assert_eq!(r.len(), 4096);
            assert!(r.iter().all(|&o| o < shards));
        }
    }

    #[test]
    fn growing_by_one_moves_about_one_share_and_only_to_the_new_shard() {
        for n in 1..=8u32 {
            let before = ring(4096, n);
            let after = ring(4096, n + 1);
            let moved: Vec<usize> = (0..4096).filter(|&s| before[s] != after[s]).collect();
            assert!(
                moved.iter().all(|&s| after[s] == n),
                "n={n}: a slot moved to an old shard"
            );
            let expected = 4096.0 / f64::from(n + 1);
            let got = moved.len() as f64;
            assert!(
                (got - expected).abs() < expected * 0.15,
                "n={n}: moved {got}, expected about {expected}"
            );
        }
    }

    #[test]
    fn shards_get_balanced_shares() {
        let r = Ring::new(1, 4096, 3);
        for shard in 0..3 {
            let n = r.slots_of(shard).count() as f64;
            assert!(
                (n - 4096.0 / 3.0).abs() < 4096.0 / 3.0 * 0.1,
                "shard {shard}: {n}"
            );
        }
    }

    #[test]
    fn the_ring_is_a_pure_function() {
        assert_eq!(ring(512, 5), ring(512, 5));
        assert_eq!(Ring::new(3, 64, 1).owner(Slot(63)), 0);
    }
}
