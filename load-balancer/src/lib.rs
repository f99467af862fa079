//! The rtc load balancer.
//!
//! - [`assign`]: the assignment engine, pure: live nodes → partition owners.
//! - [`fleet`]: heartbeat history per node and liveness, pure.
//! - [`ingest`]: tails the heartbeat stream into the fleet.
//! - [`publish`]: the leader's fenced assignment publication.
//! - [`election`]: leader election on Redis with fencing.
//! - [`baselines`]: the classic alternatives the engine is measured against.
//! - [`ring_report`]: the `ring-report` capacity-planning subcommand.
//! - [`scale`]: the scaling engine and its replay harness, pure.
//! - [`decide`]: the leader's scale tick: decide, mark, publish, record.
//! - [`actuate`]: Kubernetes actuation of a scale-in (kube-rs).
//! - [`testing`]: load balancers for integration tests ([`testing::TestLb`]).

pub mod actuate;
pub mod assign;
pub mod auth;
pub mod baselines;
pub mod config;
pub mod decide;
pub mod election;
pub mod fleet;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod publish;
pub mod ring_report;
pub mod scale;
pub mod scale_report;
pub mod service;
pub mod testing;
