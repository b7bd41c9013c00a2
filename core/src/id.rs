use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// Longest object name, in UTF-8 bytes.
pub const MAX_NAME_BYTES: usize = 512;
/// Longest class name.
pub const MAX_CLASS_BYTES: usize = 64;
/// Slots per namespace unless the namespace says otherwise.
pub const DEFAULT_SLOTS: u32 = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("object id must be 64 lowercase hex characters, got {len} characters")]
    IdLength { len: usize },
    #[error("object id must be lowercase hex (0-9, a-f)")]
    IdNotHex,
    #[error("object name must be 1 to {MAX_NAME_BYTES} bytes of UTF-8, got {len} bytes")]
    NameLength { len: usize },
    #[error(
        "class name {name:?} is invalid: it must start with a letter and hold only letters, digits and '_', at most {MAX_CLASS_BYTES} characters"
    )]
    ClassName { name: String },
}

/// A class of objects, such as `Counter`. ASCII letters, digits and `_`, starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClassName(String);

impl ClassName {
    pub fn new(name: &str) -> Result<Self, IdError> {
        let valid = !name.is_empty()
            && name.len() <= MAX_CLASS_BYTES
            && name.as_bytes()[0].is_ascii_alphabetic()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if valid {
            Ok(Self(name.to_owned()))
        } else {
            Err(IdError::ClassName {
                name: name.chars().take(80).collect(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClassName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ClassName {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A user-chosen object name: 1 to 512 bytes of UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectName(String);

impl ObjectName {
    pub fn new(name: &str) -> Result<Self, IdError> {
        if name.is_empty() || name.len() > MAX_NAME_BYTES {
            return Err(IdError::NameLength { len: name.len() });
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The 32-byte identity of an object within its class, written as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId([u8; 32]);

impl ObjectId {
    /// The id of a named object: `SHA-256("stead.v1" ‖ 0x00 ‖ class ‖ 0x00 ‖ name)`.
    pub fn named(class: &ClassName, name: &ObjectName) -> Self {
        let mut h = Sha256::new();
        h.update(b"stead.v1");
        h.update([0u8]);
        h.update(class.as_str().as_bytes());
        h.update([0u8]);
        h.update(name.as_str().as_bytes());
        let mut id = [0u8; 32];
        id.copy_from_slice(&h.finalize());
        Self(id)
    }

    /// A fresh id of 32 random bytes from the operating system.
    pub fn unique() -> Result<Self, getrandom::Error> {
        let mut id = [0u8; 32];
        getrandom::fill(&mut id)?;
        Ok(Self(id))
    }

    /// Parses the 64-character lowercase hex form.
    pub fn parse(hex_id: &str) -> Result<Self, IdError> {
        if hex_id.len() != 64 {
            return Err(IdError::IdLength {
                len: hex_id.chars().count(),
            });
        }
        if !hex_id
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(IdError::IdNotHex);
        }
        let mut id = [0u8; 32];
        hex::decode_to_slice(hex_id, &mut id).map_err(|_| IdError::IdNotHex)?;
        Ok(Self(id))
    }

    /// The id of these 32 bytes (as they travel in binary form, e.g. a slot hand-off).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The slot this id lives in: `u64_be(id[0..8]) mod slots`.
    pub fn slot(&self, slots: u32) -> Slot {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        Slot((u64::from_be_bytes(first) % u64::from(slots.max(1))) as u32)
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({})", self.to_hex())
    }
}

impl FromStr for ObjectId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A slot: the unit of placement. One slot is one directory on a shard's volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot(pub u32);

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(s: &str) -> ClassName {
        ClassName::new(s).unwrap()
    }

    #[test]
    fn named_id_is_sha256_of_prefix_class_and_name() {
        let id = ObjectId::named(&class("Counter"), &ObjectName::new("a").unwrap());
        let mut h = Sha256::new();
        h.update(b"stead.v1\0Counter\0a");
        assert_eq!(id.as_bytes().as_slice(), h.finalize().as_slice());
    }

    #[test]
    fn named_ids_differ_by_class_and_name() {
        let n = ObjectName::new("x").unwrap();
        assert_ne!(
            ObjectId::named(&class("A"), &n),
            ObjectId::named(&class("B"), &n)
        );
        // The 0x00 separator keeps ("ab","c") and ("a","bc") apart.
        assert_ne!(
            ObjectId::named(&class("ab"), &ObjectName::new("c").unwrap()),
            ObjectId::named(&class("a"), &ObjectName::new("bc").unwrap())
        );
    }

    #[test]
    fn id_round_trips_through_hex() {
        let id = ObjectId::unique().unwrap();
        let hex_id = id.to_hex();
        assert_eq!(hex_id.len(), 64);
        assert_eq!(ObjectId::parse(&hex_id).unwrap(), id);
    }

    #[test]
    fn unique_ids_differ() {
        assert_ne!(ObjectId::unique().unwrap(), ObjectId::unique().unwrap());
    }

    #[test]
    fn malformed_ids_are_refused() {
        assert_eq!(ObjectId::parse("ab"), Err(IdError::IdLength { len: 2 }));
        let upper = "A".repeat(64);
        assert_eq!(ObjectId::parse(&upper), Err(IdError::IdNotHex));
        let not_hex = "g".repeat(64);
        assert_eq!(ObjectId::parse(&not_hex), Err(IdError::IdNotHex));
        // 64 bytes but not 64 characters.
        let multibyte = "é".repeat(32);
        assert!(ObjectId::parse(&multibyte).is_err());
    }

    #[test]
    fn names_are_1_to_512_bytes() {
        assert!(ObjectName::new("").is_err());
        assert!(ObjectName::new(&"a".repeat(512)).is_ok());
        assert_eq!(
            ObjectName::new(&"a".repeat(513)),
            Err(IdError::NameLength { len: 513 })
        );
        // Bytes, not characters: 256 two-byte characters are 512 bytes.
        assert!(ObjectName::new(&"é".repeat(256)).is_ok());
        assert!(ObjectName::new(&"é".repeat(257)).is_err());
    }

    #[test]
    fn class_names_are_identifiers() {
        assert!(ClassName::new("Counter").is_ok());
        assert!(ClassName::new("chat_room2").is_ok());
        for bad in ["", "1abc", "a-b", "a b", "ä", &"a".repeat(65)] {
            assert!(ClassName::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn slot_is_first_eight_bytes_big_endian_mod_slots() {
        let mut bytes = [0u8; 32];
        bytes[7] = 5;
        bytes[6] = 1; // 0x0105 = 261
        let id = ObjectId::parse(&hex::encode(bytes)).unwrap();
        assert_eq!(id.slot(4096), Slot(261));
        assert_eq!(id.slot(256), Slot(5));
        assert_eq!(id.slot(1), Slot(0));
    }
}
