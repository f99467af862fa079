//! `load-balancer scale-report` (issue 15, in progress): scaling policies
//! judged side by side on the same traffic, on a virtual clock.
//!
//! - [`traces`]: the traffic: built-in shapes, a CSV, or a recorded demo run.

pub mod traces;
