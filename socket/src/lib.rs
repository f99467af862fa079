//! The rtc socket node: WebSocket sessions for the users of the Kafka
//! partitions it owns.
//!
//! - [`node`]: shared state, start-up and shutdown;
//! - [`ws`] and [`session`]: admission and one WebSocket session (the
//!   protocol itself is `rtc_core::protocol`);
//! - [`hub`]: who is connected, which partitions accept sessions, the
//!   consumer's position, a per-user cache of recent messages;
//! - [`catchup`]: replay from the Kafka log for resuming sessions, one
//!   shared read per partition;
//! - [`kafka`]: the embedded broker, producer and the partition consumer;
//! - [`ownership`]: applying assignment epochs and the hand-off;
//! - [`takeover`]: the server's view of hand-off reconnect time;
//! - [`follower`], [`peers`], [`heartbeat`]: the Redis side;
//! - [`admin`], [`metrics`], [`sysstat`]: operations.

pub mod admin;
pub mod catchup;
pub mod config;
pub mod follower;
pub mod heartbeat;
pub mod hub;
pub mod kafka;
pub mod metrics;
pub mod node;
pub mod ownership;
pub mod peers;
pub mod session;
pub mod sysstat;
pub mod takeover;
pub mod ws;
