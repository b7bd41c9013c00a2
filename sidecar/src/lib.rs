//! The Stead sidecar. A request's path through it is the table of contents:
//! [`ingress`] (the client port: the [`target`] a path asks for, the [`body`] read whole, headers
//! stripped) → [`route`] (which shard owns the slot: [`ownership`], [`membership`]) →
//! [`forward`] (the peer hop, received by the other shard's [`peer`] port) or [`host`] (mailbox,
//! one turn at a time) →
//! [`app`] (deliver the event) → [`api`] (the app's calls back, bound to the [`turn`]) →
//! [`storage`] (SQLite, commit, output gate) → back out. [`alarms`] and [`websocket`]s (the
//! socket [`registry`](websocket::registry), each socket's [`connection`](websocket::connection))
//! produce events into the same mailboxes. Resharding: the [`coordinator`] orders slot
//! [`handoff`]s through the [`peer_admin`] endpoints. [`dev`] runs it all locally.

pub mod admin;
pub mod alarms;
pub mod api;
pub mod app;
pub mod body;
pub mod chain;
pub mod client;
pub mod config;
pub mod coordinator;
pub mod dev;
pub mod envelope;
pub mod error;
pub mod faults;
pub mod forward;
pub mod gate;
pub mod handoff;
pub mod host;
pub mod ingress;
pub mod init;
pub mod limits;
pub mod mailbox;
pub mod membership;
pub mod metrics;
pub mod object;
pub mod ownership;
pub mod peer;
pub mod peer_admin;
pub mod project;
pub mod route;
pub mod scale;
pub mod serve;
pub mod sidecar;
pub mod sqlite_memory;
pub mod storage;
pub mod target;
pub mod turn;
pub mod watch;
pub mod websocket;
