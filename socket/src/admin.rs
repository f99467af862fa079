//! The admin port: metrics, probes, and drain control.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::hub::Hub;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::ownership::Ownership;

/// What the admin endpoints read and do.
pub struct AdminContext {
    /// Whether a critical task ended early: `/livez`.
    pub liveness: rtc_core::supervisor::Liveness,
    pub metrics: Arc<Metrics>,
    pub lifecycle: Arc<Lifecycle>,
    pub hub: Arc<Hub>,
    pub ownership: Arc<Ownership>,
}

/// 503 once a critical task has ended early (the process exits then too).
async fn livez(State(node): State<Arc<AdminContext>>) -> (StatusCode, String) {
    let (code, body) = node.liveness.livez();
    (StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE), body)
}

pub fn router(node: Arc<AdminContext>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/drain", get(drain).post(drain))
        .route("/drain/status", get(drain_status))
        .with_state(node)
}

async fn metrics(State(node): State<Arc<AdminContext>>) -> Response {
    ([("content-type", "text/plain; version=0.0.4")], node.metrics.render()).into_response()
}

/// 200 only while ready: starting and draining nodes take no new users.
async fn readyz(State(node): State<Arc<AdminContext>>) -> Response {
    let state = node.lifecycle.state();
    let status = if state == rtc_core::NodeState::Ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(json!({"state": state.as_str()}))).into_response()
}

/// Starts draining; idempotent (a Kubernetes `preStop` `httpGet` may call it
/// more than once).
async fn drain(State(node): State<Arc<AdminContext>>) -> Response {
    let started = node.lifecycle.begin_drain();
    (StatusCode::ACCEPTED, axum::Json(status_body(&node, Some(started)))).into_response()
}

async fn drain_status(State(node): State<Arc<AdminContext>>) -> Response {
    axum::Json(status_body(&node, None)).into_response()
}

fn status_body(node: &AdminContext, started_now: Option<bool>) -> serde_json::Value {
    let mut body = json!({
        "state": node.lifecycle.state().as_str(),
        "connections": node.hub.connections(),
        "owned_partitions": node.ownership.view().accepting.len(),
        "drained": node.lifecycle.drained(),
    });
    if let Some(started) = started_now {
        body["started_now"] = json!(started);
    }
    body
}
