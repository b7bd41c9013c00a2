//! What an event handler knows about its turn.

use std::sync::Arc;

use http::HeaderValue;

use crate::client::ApiClient;
use crate::storage::Storage;

/// Which object an instance or a turn is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectInfo {
    /// The class, e.g. `Counter`.
    pub class: String,
    /// The object id: 64 lowercase hex characters.
    pub id: String,
    /// The name the object was addressed by, decoded; `None` when it was addressed by id.
    ///
    /// An object addressed once by name and once by id is the same object (the id of a named
    /// object is derived from its name), so do not rely on the name being present.
    pub name: Option<String>,
}

/// One event being handled for an object: its identity and its storage.
///
/// Everything done through the turn's [`Storage`] is one transaction that commits when the
/// answer has a status below 500 (and no `stead-rollback` header), and rolls back otherwise.
pub struct Turn {
    object: Arc<ObjectInfo>,
    token: HeaderValue,
    storage: Storage,
}

impl Turn {
    pub(crate) fn new(object: Arc<ObjectInfo>, token: HeaderValue, api: ApiClient) -> Self {
        let storage = Storage::new(api, token.clone());
        Self {
            object,
            token,
            storage,
        }
    }

    /// The object's class.
    pub fn class(&self) -> &str {
        &self.object.class
    }

    /// The object's id, 64 lowercase hex characters.
    pub fn id(&self) -> &str {
        &self.object.id
    }

    /// The name the object was addressed by in this request, if it was addressed by name.
    pub fn name(&self) -> Option<&str> {
        self.object.name.as_deref()
    }

    /// Class, id and name together.
    pub fn object(&self) -> &ObjectInfo {
        &self.object
    }

    /// The turn token (`stead-turn`), for calling the app API by hand.
    pub fn token(&self) -> &str {
        self.token.to_str().unwrap_or_default()
    }

    /// The object's storage, bound to this turn. Cheap: a clone of a handle.
    pub fn storage(&self) -> Storage {
        self.storage.clone()
    }
}

/// What a stateless (front-door) request handler gets besides the request.
///
/// Stateless requests are client requests outside `/objects/`. They run concurrently and own
/// no storage.
#[derive(Clone)]
pub struct StatelessContext {
    token: HeaderValue,
}

impl StatelessContext {
    pub(crate) fn new(token: HeaderValue) -> Self {
        Self { token }
    }

    /// The request's turn token (`stead-turn`), for calling the app API by hand.
    pub fn token(&self) -> &str {
        self.token.to_str().unwrap_or_default()
    }
}
