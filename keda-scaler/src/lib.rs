//! The rtc KEDA external scaler: serves the load-balancer leader's scale
//! decision (`rtc:scale:decision` in Redis) over KEDA's
//! `externalscaler.ExternalScaler` gRPC contract, as an `AverageValue`
//! metric with target 1, so the HPA computes exactly the desired replicas.
//!
//! - [`cache`]: the watcher polling the decision key, and the cache.
//! - [`grpc`]: the four RPCs, answered from the cache.
//! - [`tls`], [`metrics`], [`admin`]: TLS/mTLS, Prometheus, admin HTTP.
//! - [`service`]: start and graceful shutdown of all of it.
//! - [`load`]: the `scaler-load` benchmark client.

pub mod admin;
pub mod cache;
pub mod config;
pub mod grpc;
pub mod load;
pub mod metrics;
pub mod service;
pub mod tls;

/// Code generated from `proto/externalscaler.proto` (KEDA's contract).
pub mod proto {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("externalscaler");
}
