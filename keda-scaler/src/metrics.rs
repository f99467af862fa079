//! The scaler's Prometheus metrics (`rtc_scaler_*`), on a recorder of its
//! own so several scalers can run in one test process. Request counters and
//! latency histograms are registered up front: the hot path only indexes.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::cache::{Reading, Snapshot};

static META: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Latency buckets (seconds): the goal is P99 ≤ 2 ms, so they are fine there.
const LATENCY_BUCKETS: [f64; 14] =
    [0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.000_75, 0.001, 0.001_5, 0.002, 0.003, 0.005, 0.01, 0.025, 0.1, 1.0];

/// The four RPCs of the contract (`rpc` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    IsActive,
    StreamIsActive,
    GetMetricSpec,
    GetMetrics,
}

impl Rpc {
    pub const ALL: [Rpc; 4] = [Rpc::IsActive, Rpc::StreamIsActive, Rpc::GetMetricSpec, Rpc::GetMetrics];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::IsActive => "IsActive",
            Self::StreamIsActive => "StreamIsActive",
            Self::GetMetricSpec => "GetMetricSpec",
            Self::GetMetrics => "GetMetrics",
        }
    }
}

/// `outcome` label values: `ok` or why the answer was UNAVAILABLE.
pub const OUTCOMES: [&str; 6] = ["ok", "not_loaded", "redis_unreachable", "missing", "malformed", "stale"];

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    requests: Vec<Vec<Counter>>,
    latency: Vec<Histogram>,
    pub desired_replicas: Gauge,
    pub decision_age: Gauge,
    pub decision_fresh: Gauge,
    pub redis_up: Gauge,
    pub streams_open: Gauge,
    pub stream_messages: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full("rtc_scaler_request_duration_seconds".into()), &LATENCY_BUCKETS)
            .expect("buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        let gauge = |name: &'static str| recorder.register_gauge(&Key::from_static_name(name), &META);
        let requests = Rpc::ALL
            .iter()
            .map(|rpc| {
                OUTCOMES
                    .iter()
                    .map(|outcome| {
                        let labels = vec![
                            Label::from_static_parts("rpc", rpc.as_str()),
                            Label::from_static_parts("outcome", outcome),
                        ];
                        recorder.register_counter(&Key::from_parts("rtc_scaler_requests_total", labels), &META)
                    })
                    .collect()
            })
            .collect();
        let latency = Rpc::ALL
            .iter()
            .map(|rpc| {
                let key = Key::from_parts(
                    "rtc_scaler_request_duration_seconds",
                    vec![Label::from_static_parts("rpc", rpc.as_str())],
                );
                recorder.register_histogram(&key, &META)
            })
            .collect();
        Self {
            requests,
            latency,
            desired_replicas: gauge("rtc_scaler_desired_replicas"),
            decision_age: gauge("rtc_scaler_decision_age_seconds"),
            decision_fresh: gauge("rtc_scaler_decision_fresh"),
            redis_up: gauge("rtc_scaler_redis_up"),
            streams_open: gauge("rtc_scaler_streams_open"),
            stream_messages: recorder
                .register_counter(&Key::from_static_name("rtc_scaler_stream_messages_total"), &META),
            handle,
            recorder,
        }
    }

    /// Counts one answered request and its latency.
    pub fn request(&self, rpc: Rpc, outcome: &'static str, took: Duration) {
        let index = Rpc::ALL.iter().position(|r| *r == rpc).unwrap_or(0);
        let o = OUTCOMES.iter().position(|x| *x == outcome).unwrap_or(0);
        self.requests[index][o].increment(1);
        self.latency[index].record(took.as_secs_f64());
    }

    /// Counts one read of the decision key by outcome.
    pub fn redis_read(&self, reading: &Reading) {
        let outcome = match reading {
            Reading::RedisUnreachable(_) => "error",
            Reading::Missing => "missing",
            Reading::Malformed(_) => "malformed",
            Reading::Decision(_) | Reading::NotLoaded => "ok",
        };
        let key = Key::from_parts("rtc_scaler_redis_reads_total", vec![Label::from_static_parts("outcome", outcome)]);
        self.recorder.register_counter(&key, &META).increment(1);
    }

    /// Sets the decision gauges from the cache at `now_ms`.
    pub fn observe(&self, snapshot: &Snapshot, now_ms: u64, max_age: Duration) {
        self.redis_up.set(if snapshot.redis_reachable() { 1.0 } else { 0.0 });
        self.decision_fresh.set(if snapshot.fresh(now_ms, max_age).is_ok() { 1.0 } else { 0.0 });
        if let Reading::Decision(d) = &snapshot.reading {
            self.desired_replicas.set(f64::from(d.desired_replicas));
            self.decision_age.set(d.age_ms(now_ms) as f64 / 1000.0);
        }
    }

    pub fn render(&self) -> String {
        self.handle.run_upkeep();
        self.handle.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_rpc_and_outcome_with_a_histogram() {
        let m = Metrics::new();
        m.request(Rpc::GetMetrics, "ok", Duration::from_micros(300));
        m.request(Rpc::GetMetrics, "stale", Duration::from_micros(300));
        m.request(Rpc::IsActive, "ok", Duration::from_millis(3));
        let text = m.render();
        assert!(text.contains(r#"rtc_scaler_requests_total{rpc="GetMetrics",outcome="ok"} 1"#), "{text}");
        assert!(text.contains(r#"rtc_scaler_requests_total{rpc="GetMetrics",outcome="stale"} 1"#), "{text}");
        assert!(
            text.contains(r#"rtc_scaler_request_duration_seconds_bucket{rpc="GetMetrics",le="0.0005"} 2"#),
            "{text}"
        );
        assert!(text.contains("rtc_scaler_desired_replicas"), "{text}");
    }
}
