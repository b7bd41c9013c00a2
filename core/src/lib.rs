//! What every part of Stead agrees on: object ids and names, slots, the wire protocol's header
//! names and event kinds, and the JSON error body.

pub mod duration;
pub mod error;
pub mod exposition;
pub mod id;
pub mod protocol;
pub mod ring;

pub use duration::{DurationError, parse_duration};
pub use error::{ErrorBody, ErrorDetail};
pub use id::{ClassName, IdError, ObjectId, ObjectName, Slot};
pub use protocol::EventKind;
pub use ring::Ring;

#[cfg(feature = "crd")]
pub mod crd;
