//! The node's Prometheus metrics (`rtc_socket_*`) and the windowed figures
//! its heartbeats report.
//!
//! Each node owns its recorder instead of installing a global one, so several
//! nodes can run in one process (the integration tests do) and each
//! `/metrics` shows only its own node.

use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

static META: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Delivery latency buckets, seconds: fine below 100 ms where the SLO is.
const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    pub connections: Gauge,
    pub connects: Counter,
    pub delivered: Counter,
    pub consumed: Counter,
    pub received: Counter,
    pub expired: Counter,
    pub slow_drops: Counter,
    pub delivery_latency: Histogram,
    pub kafka_lag: Gauge,
    pub owned_partitions: Gauge,
    pub draining: Gauge,
    pub redis_up: Gauge,
    pub assignment_epoch: Gauge,
    pub acked_epoch: Gauge,
    /// Windowed figures for heartbeats (Prometheus counters are cumulative
    /// and their values cannot be read back).
    pub window: Window,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full("rtc_socket_delivery_latency_seconds".into()), LATENCY_BUCKETS)
            .expect("bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        let describe = |name: &'static str, unit: Option<Unit>, help: &'static str| {
            recorder.describe_counter(name.into(), unit, SharedString::const_str(help));
        };
        describe("rtc_socket_connections", None, "Open WebSocket sessions");
        describe("rtc_socket_connects_total", None, "Sessions accepted");
        describe("rtc_socket_refused_total", None, "Connection attempts refused before the upgrade, by reason");
        describe("rtc_socket_disconnects_total", None, "Sessions closed, by reason");
        describe("rtc_socket_messages_delivered_total", None, "Messages written to sessions");
        describe("rtc_socket_messages_consumed_total", None, "Records consumed from Kafka");
        describe("rtc_socket_messages_received_total", None, "Messages sent by clients and acked by Kafka");
        describe("rtc_socket_delivery_latency_seconds", Some(Unit::Seconds), "Kafka record timestamp to socket write");
        describe("rtc_socket_kafka_lag", None, "Kafka consumer lag summed over owned partitions");
        describe("rtc_socket_owned_partitions", None, "Partitions this node owns");
        describe("rtc_socket_draining", None, "1 while the node drains");
        describe("rtc_socket_slow_consumer_drops_total", None, "Sessions closed because they could not keep up");
        describe("rtc_socket_invalid_frames_total", None, "Client frames refused, by reason");
        describe("rtc_socket_redis_up", None, "1 when the last Redis write succeeded");
        let gauge = |name: &'static str| recorder.register_gauge(&Key::from_static_name(name), &META);
        let counter = |name: &'static str| recorder.register_counter(&Key::from_static_name(name), &META);
        Self {
            connections: gauge("rtc_socket_connections"),
            connects: counter("rtc_socket_connects_total"),
            delivered: counter("rtc_socket_messages_delivered_total"),
            consumed: counter("rtc_socket_messages_consumed_total"),
            received: counter("rtc_socket_messages_received_total"),
            expired: counter("rtc_socket_messages_expired_total"),
            slow_drops: counter("rtc_socket_slow_consumer_drops_total"),
            delivery_latency: recorder
                .register_histogram(&Key::from_static_name("rtc_socket_delivery_latency_seconds"), &META),
            kafka_lag: gauge("rtc_socket_kafka_lag"),
            owned_partitions: gauge("rtc_socket_owned_partitions"),
            draining: gauge("rtc_socket_draining"),
            redis_up: gauge("rtc_socket_redis_up"),
            assignment_epoch: gauge("rtc_socket_assignment_epoch"),
            acked_epoch: gauge("rtc_socket_acked_epoch"),
            window: Window::default(),
            handle,
            recorder,
        }
    }

    /// A counter with one label, e.g. `disconnects_total{reason="slow"}`.
    pub fn count(&self, name: &'static str, label: &'static str, value: &'static str) {
        let key = Key::from_parts(name, vec![Label::from_static_parts(label, value)]);
        self.recorder.register_counter(&key, &META).increment(1);
    }

    pub fn disconnect(&self, reason: &'static str) {
        self.count("rtc_socket_disconnects_total", "reason", reason);
    }

    pub fn refused(&self, reason: &'static str) {
        self.count("rtc_socket_refused_total", "reason", reason);
    }

    pub fn invalid_frame(&self, reason: &'static str) {
        self.count("rtc_socket_invalid_frames_total", "reason", reason);
    }

    /// Records one message written to a session `latency_ms` after its
    /// Kafka timestamp.
    pub fn delivered(&self, latency_ms: f64) {
        self.delivered.increment(1);
        self.delivery_latency.record(latency_ms / 1000.0);
        self.window.delivered.fetch_add(1, Ordering::Relaxed);
        self.window.latency.record(latency_ms);
    }

    /// Prometheus text exposition of this node's metrics.
    pub fn render(&self) -> String {
        self.handle.run_upkeep();
        self.handle.render()
    }
}

/// Counts since the previous heartbeat.
#[derive(Default)]
pub struct Window {
    pub consumed: AtomicU64,
    pub delivered: AtomicU64,
    pub latency: LatencyWindow,
}

/// What one heartbeat reports of the interval that just ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowFigures {
    pub consumed: u64,
    pub delivered: u64,
    pub p95_latency_ms: f64,
}

impl Window {
    /// Reads and resets the window.
    pub fn take(&self) -> WindowFigures {
        WindowFigures {
            consumed: self.consumed.swap(0, Ordering::Relaxed),
            delivered: self.delivered.swap(0, Ordering::Relaxed),
            p95_latency_ms: self.latency.take_quantile(0.95),
        }
    }
}

/// Upper bounds (ms) of the latency window's buckets; the last is open.
const WINDOW_BOUNDS_MS: [f64; 24] = [
    0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 500.0, 750.0,
    1000.0, 2000.0, 5000.0, 10000.0, 30000.0,
];

/// A lock-free latency histogram over one heartbeat interval; quantiles are
/// the upper bound of the bucket they fall in (conservative).
#[derive(Default)]
pub struct LatencyWindow {
    buckets: [AtomicU64; WINDOW_BOUNDS_MS.len() + 1],
}

impl LatencyWindow {
    pub fn record(&self, ms: f64) {
        let i = WINDOW_BOUNDS_MS.partition_point(|b| *b < ms);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The `q` quantile of what was recorded since the last call (0 when
    /// nothing was), and resets the window.
    pub fn take_quantile(&self, q: f64) -> f64 {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.swap(0, Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return WINDOW_BOUNDS_MS.get(i).copied().unwrap_or(WINDOW_BOUNDS_MS[WINDOW_BOUNDS_MS.len() - 1] * 2.0);
            }
        }
        unreachable!("rank is at most the total")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_of_the_window() {
        let w = LatencyWindow::default();
        assert_eq!(w.take_quantile(0.95), 0.0);
        for _ in 0..94 {
            w.record(4.0);
        }
        for _ in 0..6 {
            w.record(120.0);
        }
        // 95th of 100 falls among the slow ones.
        assert_eq!(w.take_quantile(0.95), 150.0);
        // And the window was reset.
        assert_eq!(w.take_quantile(0.95), 0.0);
        for _ in 0..100 {
            w.record(4.0);
        }
        assert_eq!(w.take_quantile(0.95), 5.0);
        w.record(1e9);
        assert_eq!(w.take_quantile(0.5), 60_000.0);
    }

    #[test]
    fn metrics_are_per_node_and_rendered() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.connects.increment(3);
        a.disconnect("slow");
        a.delivered(12.0);
        let text = a.render();
        assert!(text.contains("rtc_socket_connects_total 3"), "{text}");
        assert!(text.contains("rtc_socket_disconnects_total{reason=\"slow\"} 1"), "{text}");
        assert!(text.contains("rtc_socket_delivery_latency_seconds_bucket{le=\"0.02\"} 1"), "{text}");
        assert!(!b.render().contains("rtc_socket_connects_total 3"));
        assert_eq!(a.window.take().delivered, 1);
    }
}
