//! The admin port: `/metrics`, `/livez`, `/readyz` and `/v1/decision`.
//!
//! Readiness follows Redis reachability (as the gRPC health service does):
//! a stale or missing decision is the leader's problem, not this replica's,
//! and is reported to KEDA as UNAVAILABLE by every replica alike.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::sync::watch;

use crate::cache::{Reading, Snapshot};
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct Admin {
    /// Whether a critical task ended early: `/livez`.
    pub liveness: rtc_core::supervisor::Liveness,
    pub cache: watch::Receiver<Snapshot>,
    pub metrics: Arc<Metrics>,
    pub max_age: Duration,
    pub clock: fn() -> u64,
}

/// 503 once a critical task has ended early (the process exits then too).
async fn livez(State(admin): State<Admin>) -> (StatusCode, String) {
    let (code, body) = admin.liveness.livez();
    (StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE), body)
}

pub fn router(admin: Admin) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/v1/decision", get(decision))
        .with_state(admin)
}

async fn metrics(State(admin): State<Admin>) -> String {
    let snapshot = admin.cache.borrow().clone();
    admin.metrics.observe(&snapshot, (admin.clock)(), admin.max_age);
    admin.metrics.render()
}

async fn readyz(State(admin): State<Admin>) -> Response {
    let snapshot = admin.cache.borrow().clone();
    if snapshot.redis_reachable() {
        (StatusCode::OK, "ok").into_response()
    } else {
        let reason = match &snapshot.reading {
            Reading::RedisUnreachable(e) => format!("redis unreachable: {e}"),
            _ => "redis not read yet".to_owned(),
        };
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"error": reason}))).into_response()
    }
}

/// What this replica serves now, for people and scripts.
async fn decision(State(admin): State<Admin>) -> Response {
    let snapshot = admin.cache.borrow().clone();
    let now = (admin.clock)();
    let (serving, unavailable) = match snapshot.fresh(now, admin.max_age) {
        Ok(d) => (Some(d.desired_replicas), None),
        Err(why) => (None, Some(why.to_string())),
    };
    let decision = match &snapshot.reading {
        Reading::Decision(d) => Some(json!({"decision": d.as_ref(), "age_ms": snapshot.decision_age_ms(now)})),
        _ => None,
    };
    axum::Json(json!({
        "reading": snapshot.reading.to_string(),
        "read_at_ms": snapshot.read_at_ms,
        "max_age_ms": admin.max_age.as_millis() as u64,
        "desired_replicas": serving,
        "unavailable": unavailable,
        "latest": decision,
    }))
    .into_response()
}
