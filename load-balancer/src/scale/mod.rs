//! Scaling: how many socket nodes the fleet needs, decided by the leader
//! every tick from the heartbeat history.
//!
//! - [`config`]: every threshold, with its default.
//! - [`signals`]: per-node and fleet signals with trends, pure.
//! - [`engine`]: the rules, pure; time is passed in. Steps respect the
//!   HPA's tolerance as modelled in [`rtc_core::hpa`].
//! - [`sim`]: the replay harness (open and closed loop) the tests use.

pub mod config;
pub mod engine;
pub mod signals;
pub mod sim;

pub use config::ScaleConfig;
pub use engine::{Engine, Finding, Inputs, Outcome};
