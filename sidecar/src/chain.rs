//! The call chain of a request: the objects that are busy waiting on it, outermost first.
//!
//! When object A calls B and B calls back into A, A's mailbox is still held by the turn waiting on
//! B: queueing the call would deadlock. The chain travels with every object call (in
//! `stead-chain`, across shards too), and a call to an object already in its chain is refused
//! with 508 instead.

use stead_core::{ClassName, ObjectId};

use crate::object::ObjectKey;

/// Longest chain of nested object calls.
pub const MAX_DEPTH: usize = 16;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallChain(Vec<ObjectKey>);

impl CallChain {
    pub fn contains(&self, key: &ObjectKey) -> bool {
        self.0.contains(key)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The object whose turn made this call: the innermost object of the chain.
    pub fn caller(&self) -> Option<&ObjectKey> {
        self.0.last()
    }

    /// This chain with `key` appended: the chain of calls made by `key`'s turn.
    pub fn with(&self, key: ObjectKey) -> Self {
        let mut v = self.0.clone();
        v.push(key);
        Self(v)
    }

    /// `Class/id,Class/id`
    pub fn to_header(&self) -> String {
        self.0
            .iter()
            .map(|(c, id)| format!("{c}/{}", id.to_hex()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Parses the header form; `None` if it is malformed or longer than [`MAX_DEPTH`].
    pub fn parse(header: &str) -> Option<Self> {
        if header.is_empty() {
            return Some(Self::default());
        }
        let mut v = Vec::new();
        for part in header.split(',') {
            let (class, id) = part.split_once('/')?;
            v.push((ClassName::new(class).ok()?, ObjectId::parse(id).ok()?));
            if v.len() > MAX_DEPTH {
                return None;
            }
        }
        Some(Self(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stead_core::ObjectName;

    fn key(name: &str) -> ObjectKey {
        let c = ClassName::new("Counter").unwrap();
        let id = ObjectId::named(&c, &ObjectName::new(name).unwrap());
        (c, id)
    }

    #[test]
    fn chain_round_trips_through_its_header() {
        let chain = CallChain::default().with(key("a")).with(key("b"));
        assert_eq!(CallChain::parse(&chain.to_header()), Some(chain.clone()));
        assert!(chain.contains(&key("a")));
        assert!(!chain.contains(&key("c")));
        assert_eq!(CallChain::parse(""), Some(CallChain::default()));
    }

    #[test]
    fn malformed_or_too_deep_chains_are_refused() {
        assert_eq!(CallChain::parse("Counter/zz"), None);
        assert_eq!(CallChain::parse("no-slash"), None);
        let mut deep = CallChain::default();
        for i in 0..=MAX_DEPTH {
            deep = deep.with(key(&i.to_string()));
        }
        assert_eq!(CallChain::parse(&deep.to_header()), None);
    }
}
