//! The admin port: metrics, probes, and drain control.
//!
//! `POST /drain` changes what the node does, so it takes a bearer token
//! (`RTC_ADMIN_TOKEN`) and nothing else: no GET (a web page could make a
//! browser send one), and without a configured token it is refused. The
//! orchestrator does not need it: SIGTERM drains too.

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
    /// SHA-256 of the bearer token `/drain` takes; `None`: refused.
    pub admin_token_digest: Option<[u8; 32]>,
}

impl AdminContext {
    pub fn token_digest(token: &str) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(token.as_bytes()).into()
    }

    /// Whether `authorization` carries the admin token. Digests are
    /// compared, so the time taken says nothing about the token.
    fn authorized(&self, authorization: Option<&str>) -> bool {
        let Some(expected) = &self.admin_token_digest else { return false };
        let token = authorization.and_then(|h| h.strip_prefix("Bearer ")).unwrap_or_default();
        Self::token_digest(token) == *expected
    }
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
        .route("/drain", axum::routing::post(drain))
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

/// Starts draining; idempotent. 401 without the admin token, 403 when no
/// token is configured (both counted).
async fn drain(State(node): State<Arc<AdminContext>>, headers: axum::http::HeaderMap) -> Response {
    if node.admin_token_digest.is_none() {
        node.metrics.count("rtc_socket_admin_refused_total", "reason", "no_token_configured");
        let message = "drain over HTTP is off: set RTC_ADMIN_TOKEN (SIGTERM drains too)";
        return (StatusCode::FORBIDDEN, axum::Json(json!({"error": message}))).into_response();
    }
    let authorization = headers.get("authorization").and_then(|h| h.to_str().ok());
    if !node.authorized(authorization) {
        node.metrics.count("rtc_socket_admin_refused_total", "reason", "bad_token");
        return (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": "missing or wrong bearer token"})))
            .into_response();
    }
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
