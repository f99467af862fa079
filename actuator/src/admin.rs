//! The admin port: `/metrics` (Prometheus), `/livez`, and `/v1/status`
//! (the pods and counts, for scripts such as the demo's live view).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use metrics::{Counter, Gauge, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tokio::sync::watch;

use crate::controller::Status;

static META: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// `action` label values of `rtc_actuator_actions_total`, registered up
/// front so every series exists from the start.
pub const ACTIONS: [&str; 6] = ["scale_out", "scale_in", "spawn", "terminate", "kill", "unexpected_exit"];

/// The actuator's metrics (`rtc_actuator_*`), on a recorder of its own so
/// several actuators can run in one test process.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    desired: Gauge,
    current: Gauge,
    pub scaler_failures: Gauge,
    pub fallback_active: Gauge,
    syncs: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let replicas = |kind: &'static str| {
            let key = Key::from_parts("rtc_actuator_replicas", vec![Label::from_static_parts("kind", kind)]);
            recorder.register_gauge(&key, &META)
        };
        let gauge = |name: &'static str| recorder.register_gauge(&Key::from_static_name(name), &META);
        let metrics = Self {
            desired: replicas("desired"),
            current: replicas("current"),
            scaler_failures: gauge("rtc_actuator_scaler_consecutive_failures"),
            fallback_active: gauge("rtc_actuator_fallback_active"),
            syncs: recorder.register_counter(&Key::from_static_name("rtc_actuator_syncs_total"), &META),
            handle,
            recorder,
        };
        for action in ACTIONS {
            metrics.action_counter(action).absolute(0);
        }
        metrics
    }

    fn action_counter(&self, action: &'static str) -> Counter {
        let key = Key::from_parts("rtc_actuator_actions_total", vec![Label::from_static_parts("action", action)]);
        self.recorder.register_counter(&key, &META)
    }

    /// Counts one action (one of [`ACTIONS`]).
    pub fn action(&self, action: &'static str) {
        self.action_counter(action).increment(1);
    }

    pub fn sync(&self) {
        self.syncs.increment(1);
    }

    pub fn replicas(&self, desired: u32, current: usize) {
        self.desired.set(f64::from(desired));
        self.current.set(current as f64);
    }

    pub fn render(&self) -> String {
        self.handle.run_upkeep();
        self.handle.render()
    }
}

#[derive(Clone)]
pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub status: watch::Receiver<Status>,
}

pub fn router(admin: Admin) -> Router {
    Router::new()
        .route("/metrics", get(|State(a): State<Admin>| async move { a.metrics.render() }))
        .route("/livez", get(|| async { "ok" }))
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
        m.action("spawn");
        m.action("spawn");
        let text = m.render();
        assert!(text.contains(r#"rtc_actuator_replicas{kind="desired"} 5"#), "{text}");
        assert!(text.contains(r#"rtc_actuator_replicas{kind="current"} 3"#), "{text}");
        assert!(text.contains(r#"rtc_actuator_actions_total{action="spawn"} 2"#), "{text}");
        assert!(text.contains(r#"rtc_actuator_actions_total{action="scale_in"} 0"#), "{text}");
    }
}
