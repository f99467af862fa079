//! The load balancer's Prometheus metrics (`rtc_lb_*`), on a recorder of its
//! own so several replicas can run in one test process.

use metrics::{Counter, Gauge, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

static META: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    pub is_leader: Gauge,
    pub leader_epoch: Gauge,
    pub leader_changes: Counter,
    pub assignment_epoch: Gauge,
    pub partitions_moved: Counter,
    pub heartbeats: Counter,
    pub heartbeat_lag: Gauge,
    pub desired_replicas: Gauge,
    pub current_replicas: Gauge,
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
        let gauge = |name: &'static str| recorder.register_gauge(&Key::from_static_name(name), &META);
        let counter = |name: &'static str| recorder.register_counter(&Key::from_static_name(name), &META);
        Self {
            is_leader: gauge("rtc_lb_is_leader"),
            leader_epoch: gauge("rtc_lb_leader_epoch"),
            leader_changes: counter("rtc_lb_leader_changes_total"),
            assignment_epoch: gauge("rtc_lb_assignment_epoch"),
            partitions_moved: counter("rtc_lb_partitions_moved_total"),
            heartbeats: counter("rtc_lb_heartbeats_total"),
            heartbeat_lag: gauge("rtc_lb_heartbeat_lag_seconds"),
            desired_replicas: gauge("rtc_lb_desired_replicas"),
            current_replicas: gauge("rtc_lb_current_replicas"),
            handle,
            recorder,
        }
    }

    pub fn count(&self, name: &'static str, label: &'static str, value: &'static str) {
        let key = Key::from_parts(name, vec![Label::from_static_parts(label, value)]);
        self.recorder.register_counter(&key, &META).increment(1);
    }

    pub fn count_labels(&self, name: &'static str, labels: &[(&'static str, &'static str)]) {
        let labels = labels.iter().map(|(k, v)| Label::from_static_parts(k, v)).collect::<Vec<_>>();
        self.recorder.register_counter(&Key::from_parts(name, labels), &META).increment(1);
    }

    pub fn set(&self, name: &'static str, label: &'static str, value: &'static str, to: f64) {
        let key = Key::from_parts(name, vec![Label::from_static_parts(label, value)]);
        self.recorder.register_gauge(&key, &META).set(to);
    }

    pub fn render(&self) -> String {
        self.handle.run_upkeep();
        self.handle.render()
    }
}

impl crate::ingest::IngestObserver for Metrics {
    fn invalid(&self, reason: &'static str) {
        self.count("rtc_lb_invalid_heartbeats_total", "reason", reason);
    }

    fn ingested(&self, taken: usize, lag_seconds: f64) {
        self.heartbeats.increment(taken as u64);
        self.heartbeat_lag.set(lag_seconds);
    }
}
