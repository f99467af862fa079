//! Contracts shared by the rtc services.
//!
//! Everything two services must agree on lives here and nowhere else: the
//! JSON documents they exchange through Redis (heartbeat, assignment,
//! decision), the Redis key names, the Kafka-compatible partitioner and the
//! connect token, and the WebSocket protocol. See `docs/ARCHITECTURE.md` for the
//! contracts in prose.

pub mod assignment;
pub mod config;
pub mod decision;
pub mod flags;
pub mod heartbeat;
/// A pure model of the Kubernetes HPA acting on the scaler's metric (tests, local actuator).
pub mod hpa;
pub mod ids;
pub mod keys;
pub mod listen;
/// Each service's Prometheus recorder, built one way.
pub mod metrics_export;
pub mod partitioner;
pub mod protocol;
pub mod redis_io;
pub mod route;
/// Critical tasks: one that ends before shutdown makes the process exit non-zero.
pub mod supervisor;
pub mod token;
mod wire;

pub use assignment::{Assignment, AssignmentNode};
pub use decision::{Action, Decision, Urgency};
pub use heartbeat::{Heartbeat, NodeState};
pub use keys::Keys;
pub use partitioner::{murmur2, partition_for_key};
pub use route::RouteAnswer;
pub use token::{ConnectClaims, TokenError, TokenSigner};
pub use wire::{ContractError, Document, MAX_DOCUMENT_BYTES};

/// The only contract version this build reads and writes.
pub const CONTRACT_VERSION: u32 = 1;
