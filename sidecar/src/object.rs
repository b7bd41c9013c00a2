use std::path::{Path, PathBuf};

use stead_core::{ClassName, ObjectId, ObjectName, Slot};

/// One durable object as the sidecar addresses it: class, id, the name it was reached by (if
/// any), and its slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    pub class: ClassName,
    pub id: ObjectId,
    pub name: Option<ObjectName>,
    pub slot: Slot,
}

/// The part of an object's identity that picks its mailbox and its database.
pub type ObjectKey = (ClassName, ObjectId);

impl ObjectRef {
    pub fn new(class: ClassName, id: ObjectId, name: Option<ObjectName>, slots: u32) -> Self {
        let slot = id.slot(slots);
        Self {
            class,
            id,
            name,
            slot,
        }
    }

    pub fn key(&self) -> ObjectKey {
        (self.class.clone(), self.id)
    }

    /// `{data}/slots/{slot}/{class}/{id}.sqlite`
    pub fn database_path(&self, data_dir: &Path) -> PathBuf {
        data_dir
            .join("slots")
            .join(self.slot.to_string())
            .join(self.class.as_str())
            .join(format!("{}.sqlite", self.id.to_hex()))
    }
}
