//! Test helpers shared by the rtc crates. Faults come from outside the
//! process under test: [`FaultProxy`] stands between a client and a server
//! and black-holes or cuts their connections on demand; [`RedisServer`] is
//! a test's own `redis-server` to flush, stall or restart.

mod proxy;
mod redis_server;

pub use proxy::{FaultProxy, ProxyMode};
pub use redis_server::RedisServer;
