//! The rtc socket node: WebSocket sessions for the users of the Kafka
//! partitions it owns. The contracts are in `docs/ARCHITECTURE.md`.
//!
//! - [`server`]: the one module that wires every other: start-up, the
//!   running node's handle, shutdown;
//! - [`ws`], [`upgrade`] and [`session`]: admission, the handshake (and
//!   the lazily buffered socket under it), one WebSocket session (the
//!   protocol itself is `rtc_core::protocol`);
//! - [`hub`]: who is connected, which partitions accept sessions, the
//!   consumer's position, a per-user cache, the memory budget;
//!   [`mailbox`]: one session's queue and close order; [`pacing`]: the
//!   node's schedule of disconnects when users must move;
//! - [`kafka`]: the embedded broker, the producer, and the consumer task
//!   that feeds the hub; [`catchup`]: replay from the log for resuming
//!   sessions, one shared read per partition;
//! - [`ownership`]: the owned-partition view, the epoch and its
//!   acknowledgement; [`handoff`]: applying assignment epochs;
//! - [`lifecycle`]: starting, ready, draining;
//! - [`takeover`]: the server's view of hand-off reconnect time;
//! - [`follower`], [`peers`], [`heartbeat`]: the Redis side; [`lease`]:
//!   the node's lease, renewed by heartbeats, that fences it when it runs
//!   out;
//! - [`admin`], [`metrics`], [`sysstat`]: operations;
//! - [`testing`]: socket nodes for integration tests ([`testing::TestNode`]).

pub mod admin;
pub mod catchup;
pub mod config;
pub mod follower;
pub mod handoff;
pub mod heartbeat;
pub mod hub;
pub mod kafka;
pub mod lease;
pub mod lifecycle;
pub mod mailbox;
pub mod metrics;
pub mod ownership;
pub mod pacing;
pub mod peers;
pub mod server;
pub mod session;
pub mod sysstat;
pub mod takeover;
pub mod testing;
pub mod upgrade;
pub mod used_tokens;
pub mod ws;
