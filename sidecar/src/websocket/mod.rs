//! Hibernatable WebSockets: the sidecar holds every socket; the app sees events.
//!
//! The [`registry`] keeps, per object, each socket's sender, tags and attachment, and the
//! object's auto-response pair. It outlives the object's mailbox and database, so an idle object
//! can hibernate while its sockets stay connected. Messages from clients become events in the
//! object's mailbox ([`connection`]); messages from the app wait in the turn's outbox until the
//! turn commits.
//!
//! Each socket has a reader ([`connection`]'s `run`) and a writer task. What waits to be written
//! is bounded per socket, in bytes and in messages, and so are the pongs owed to a client's
//! pings; a client that does not read is closed with 1008 instead of growing the sidecar's
//! memory. Protocol failures are answered with a Close frame of their RFC 6455 §7.4.1 code.

pub mod connection;
pub mod registry;
