//! The rtc load balancer.
//!
//! - [`assign`]: the assignment engine, pure: live nodes → partition owners.
//! - [`baselines`]: the classic alternatives the engine is measured against.
//! - [`ring_report`]: the `ring-report` capacity-planning subcommand.

pub mod assign;
pub mod baselines;
pub mod ring_report;
