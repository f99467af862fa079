//! Test helpers shared by the rtc crates. Faults come from outside the
//! process under test: [`FaultProxy`] stands between a client and a server
//! and black-holes or cuts their connections on demand.

mod proxy;

pub use proxy::{FaultProxy, ProxyMode};
