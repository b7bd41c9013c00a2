//! Tests over real loopback HTTP: a small in-test server plays the sidecar's app API, and a
//! client plays the sidecar sending events.

mod calls;
mod carry;
mod dispatch;
mod events;
mod fake_api;
mod protocol2;
#[cfg(unix)]
mod unix;
mod wire;
