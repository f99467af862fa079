//! The admin port: `/metrics` (Prometheus), `/livez`, and `/v1/status`
//! (the pods and counts, for scripts such as the demo's live view).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use metrics::{Counter, Gauge};
use rtc_core::metrics_export::{CounterFamily, Registry};
use tokio::sync::watch;

use crate::controller::Status;

rtc_core::label_values! {
    /// `action` of `rtc_actuator_actions_total`.
    pub enum Action {
        ScaleOut => "scale_out",
        ScaleIn => "scale_in",
        Spawn => "spawn",
        Terminate => "terminate",
        Kill => "kill",
        UnexpectedExit => "unexpected_exit",
    }
}

/// Every metric's `# HELP` text.
const HELP: &[(&str, &str)] = &[
    ("rtc_actuator_replicas", "Socket replicas: desired (the HPA's count) and current (running, not stopping)"),
    ("rtc_actuator_scaler_consecutive_failures", "Scaler calls failed in a row (KEDA's fallback counter)"),
    ("rtc_actuator_fallback_active", "1 while KEDA's fallback replica count is in force"),
    ("rtc_actuator_syncs_total", "KEDA + HPA sync loops run"),
    ("rtc_actuator_actions_total", "What the actuator did, by action"),
];

/// The actuator's metrics (`rtc_actuator_*`), on a recorder of its own so
/// several actuators can run in one test process.
pub struct Metrics {
    registry: Registry,
    desired: Gauge,
    current: Gauge,
    pub scaler_failures: Gauge,
    pub fallback_active: Gauge,
    syncs: Counter,
    actions: CounterFamily,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new(HELP, &[]);
        let replicas = |kind: &'static str| registry.gauge("rtc_actuator_replicas", &[("kind", kind)]);
        let gauge = |name: &'static str| registry.gauge(name, &[]);
        Self {
            desired: replicas("desired"),
            current: replicas("current"),
            scaler_failures: gauge("rtc_actuator_scaler_consecutive_failures"),
            fallback_active: gauge("rtc_actuator_fallback_active"),
            syncs: registry.counter("rtc_actuator_syncs_total", &[]),
            actions: registry.family("rtc_actuator_actions_total", "action", Action::LABELS.iter().copied()),
            registry,
        }
    }

    pub fn action(&self, action: Action) {
        self.actions.increment(action.as_str());
    }

    pub fn sync(&self) {
        self.syncs.increment(1);
    }

    pub fn replicas(&self, desired: u32, current: usize) {
        self.desired.set(f64::from(desired));
        self.current.set(current as f64);
    }

    pub fn render(&self) -> String {
        self.registry.render()
    }
}

#[derive(Clone)]
pub struct Admin {
    /// Whether a critical task ended early: `/livez`.
    pub liveness: rtc_core::supervisor::Liveness,
    pub metrics: Arc<Metrics>,
    pub status: watch::Receiver<Status>,
}

/// 503 once a critical task has ended early (the process exits then too).
async fn livez(State(admin): State<Admin>) -> (axum::http::StatusCode, String) {
    let (code, body) = admin.liveness.livez();
    (axum::http::StatusCode::from_u16(code).unwrap_or(axum::http::StatusCode::SERVICE_UNAVAILABLE), body)
}

pub fn router(admin: Admin) -> Router {
    Router::new()
        .route("/metrics", get(|State(a): State<Admin>| async move { a.metrics.render() }))
        .route("/livez", get(livez))
        .route("/v1/status", get(|State(a): State<Admin>| async move { axum::Json(a.status.borrow().clone()) }))
        .with_state(admin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_and_actions_are_exported() {
        let m = Metrics::new();
        m.replicas(5, 3);
        m.action(Action::Spawn);
        m.action(Action::Spawn);
        let text = m.render();
        assert!(text.contains(r#"rtc_actuator_replicas{kind="desired"} 5"#), "{text}");
        assert!(text.contains(r#"rtc_actuator_replicas{kind="current"} 3"#), "{text}");
        assert!(text.contains(r#"rtc_actuator_actions_total{action="spawn"} 2"#), "{text}");
        assert!(text.contains(r#"rtc_actuator_actions_total{action="scale_in"} 0"#), "{text}");
    }
}
