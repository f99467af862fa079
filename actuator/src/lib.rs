//! The rtc local actuator: on one machine, what KEDA and the HPA do in a
//! cluster. It polls the rtc KEDA scaler over gRPC, applies the HPA model
//! (tolerance, min/max, behavior), and starts and stops socket-node
//! processes to match, removing the pod the load balancer drained first.
//!
//! - [`config`]: flags (each with an `RTC_*` variable).
//! - [`sync`] (pure): one KEDA + HPA sync, fallback and cpu/memory backup rules.
//! - [`victims`] (pure): which pods go on scale-in.
//! - [`keda`]: the gRPC client side of KEDA's external scaler contract.
//! - [`fleet`]: heartbeats and the assignment from Redis.
//! - [`pods`]: node processes: ports, logs, SIGTERM → SIGKILL, crash backoff.
//! - [`events`]: the JSONL record of syncs and actions.
//! - [`admin`]: `/metrics`, `/livez`, `/v1/status`.
//! - [`controller`]: the loop tying them together.
#![allow(clippy::disallowed_types)] // measures real processes and networks: std's wall-clock Instant on purpose

pub mod admin;
pub mod config;
pub mod controller;
pub mod events;
pub mod fleet;
pub mod keda;
pub mod pods;
pub mod sync;
pub mod victims;
