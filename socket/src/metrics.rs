//! The node's Prometheus metrics (`rtc_socket_*`) and the windowed figures
//! its heartbeats report.
//!
//! Each node owns its recorder instead of installing a global one, so several
//! nodes can run in one process (the integration tests do) and each
//! `/metrics` shows only its own node.

use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{Counter, Gauge, Histogram};
use rtc_core::ContractError;
use rtc_core::metrics_export::{CounterFamily, Registry};

use rtc_core::protocol::{CloseReason, ConnectRefusal as Refused, InvalidFrame, ResumeFailure};

/// Delivery latency buckets, seconds: fine below 100 ms where the SLO is.
const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Hand-off reconnect buckets, seconds: fine around the 1 s P99 promise.
const RECONNECT_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0];

/// Catch-up pass lengths, records: from a reconnect's few to the scan bound.
const SCAN_BUCKETS: &[f64] = &[1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0, 1_000_000.0];

/// `reason` of `rtc_socket_disconnects_total` when the client went away.
pub const CLIENT_GONE: &str = "client";

rtc_core::label_values! {
    /// `kind` of `rtc_socket_kafka_errors_total`.
    pub enum KafkaFailure {
        Produce => "produce",
        Consume => "consume",
        Assign => "assign",
        Commit => "commit",
        HandoffCommit => "handoff_commit",
    }
}

rtc_core::label_values! {
    /// `direction` of the hand-off counters.
    pub enum Direction { Acquire => "acquire", Release => "release" }
}

rtc_core::label_values! {
    /// `outcome` of `rtc_socket_heartbeats_total`.
    pub enum HeartbeatOutcome { Ok => "ok", Error => "error" }
}

rtc_core::label_values! {
    /// `what` of `rtc_socket_budget_evictions_total`: what the budget did
    /// not hold.
    pub enum Evicted {
        /// A user's cached messages (a resume reads the log instead).
        Cache => "cache",
        /// A message for a session (closed as slow; it resumes from the log).
        Queue => "queue",
        /// A replayed message (the replay pauses and reads it again later).
        Replay => "replay",
    }
}

rtc_core::label_values! {
    /// `reason` of `rtc_socket_invalid_records_total`.
    pub enum InvalidRecord { Key => "key" }
}

/// Every metric's `# HELP` text.
const HELP: &[(&str, &str)] = &[
    ("rtc_socket_connections", "Open WebSocket sessions"),
    ("rtc_socket_capacity", "Sessions this node is sized for (--capacity)"),
    ("rtc_socket_cpu_ratio", "CPU use as a fraction of the container's limit (or the host), as in the last heartbeat"),
    (
        "rtc_socket_memory_ratio",
        "Memory use as a fraction of the container's limit (or the host), as in the last heartbeat",
    ),
    ("rtc_socket_connects_total", "Sessions accepted"),
    ("rtc_socket_refused_total", "Connection attempts refused before the upgrade, by reason"),
    ("rtc_socket_disconnects_total", "Sessions closed, by reason (client: the client went away)"),
    ("rtc_socket_messages_delivered_total", "Messages written to sessions"),
    ("rtc_socket_messages_consumed_total", "Records consumed from Kafka"),
    ("rtc_socket_messages_received_total", "Messages sent by clients and acked by Kafka"),
    (
        "rtc_socket_messages_expired_total",
        "Live messages delivered older than RTC_MAX_MESSAGE_AGE_MS, left out of the delivery latency (a partition \
         catching up, not a slow node)",
    ),
    ("rtc_socket_delivery_latency_seconds", "Kafka record timestamp to socket write, live messages only"),
    ("rtc_socket_messages_replayed_total", "Messages written to resuming sessions from the log or the cache"),
    ("rtc_socket_resume_cache_hits_total", "Resumes whose whole gap was in this node's memory (no log read)"),
    ("rtc_socket_catchup_reads_total", "Catch-up passes: one read of a partition's log shared by its resumers"),
    ("rtc_socket_catchup_scanned_total", "Records read by catch-up passes"),
    ("rtc_socket_catchup_scan_records", "Records one catch-up pass read, from its first offset to where it ended"),
    ("rtc_socket_resume_unrecovered_total", "Resumes answered recovered:false, by reason"),
    ("rtc_socket_memory_budget_bytes", "Bytes of records the node may hold in memory (RTC_MEMORY_BUDGET_BYTES)"),
    ("rtc_socket_held_bytes", "Bytes of records held in memory (cached and queued), as of the last sweep"),
    (
        "rtc_socket_budget_evictions_total",
        "Records the memory budget did not hold, by what: a user's cache dropped, or a session closed as slow",
    ),
    (
        "rtc_socket_resume_seconds",
        "A resume's replay: from the client's resume to resumed (the session's live messages wait meanwhile)",
    ),
    (
        "rtc_socket_reconnect_seconds",
        "Hand-off reconnect time seen by the server: from this node taking over a partition moved from another node \
         (applying the epoch that gave it the partition) to the welcome of each of its users who then resumes, once \
         per user, within 10 s; an upper bound of the client's reconnect time (it includes the old node's pacing and \
         jitter)",
    ),
    ("rtc_socket_kafka_lag", "Kafka consumer lag summed over owned partitions"),
    ("rtc_socket_kafka_errors_total", "Kafka operations that failed, by kind"),
    ("rtc_socket_owned_partitions", "Partitions this node owns"),
    ("rtc_socket_assignment_epoch", "Newest assignment epoch applied"),
    ("rtc_socket_acked_epoch", "Newest assignment epoch acknowledged in a heartbeat"),
    ("rtc_socket_handoffs_total", "Partition hand-offs completed, by direction"),
    ("rtc_socket_handoff_timeouts_total", "Hand-offs that went on after a timeout, by direction"),
    ("rtc_socket_draining", "1 while the node drains"),
    ("rtc_socket_slow_consumer_drops_total", "Sessions closed because they did not read their messages in time"),
    ("rtc_socket_invalid_frames_total", "Client frames refused, by reason"),
    ("rtc_socket_invalid_records_total", "Kafka records that go to nobody, by reason"),
    ("rtc_socket_invalid_assignments_total", "Assignments read from Redis and ignored, by reason"),
    ("rtc_socket_invalid_peer_heartbeats_total", "Other nodes' heartbeats ignored, by reason"),
    ("rtc_socket_heartbeats_total", "Heartbeats written to Redis, by outcome"),
    ("rtc_socket_redis_up", "1 when the last Redis write succeeded"),
    ("rtc_socket_admin_refused_total", "Admin requests refused, by reason (no token configured, bad token)"),
    ("rtc_socket_fenced", "1 while this node's lease has run out and it serves no partition"),
    ("rtc_socket_fences_total", "Times this node fenced itself: no heartbeat written for the lease time"),
];

pub struct Metrics {
    registry: Registry,
    pub connections: Gauge,
    pub capacity: Gauge,
    pub cpu: Gauge,
    pub memory: Gauge,
    pub connects: Counter,
    pub delivered: Counter,
    pub consumed: Counter,
    pub received: Counter,
    pub expired: Counter,
    pub slow_drops: Counter,
    pub replayed: Counter,
    pub resume_cache_hits: Counter,
    pub catchup_reads: Counter,
    pub catchup_scanned: Counter,
    pub catchup_scan_records: Histogram,
    /// `reason`: [`ResumeFailure`].
    pub resume_unrecovered: CounterFamily,
    pub memory_budget: Gauge,
    pub held_bytes: Gauge,
    /// `what`: [`Evicted`].
    pub budget_evictions: CounterFamily,
    pub delivery_latency: Histogram,
    /// See `rtc_socket_reconnect_seconds` in [`HELP`] and `crate::takeover`.
    pub reconnect: Histogram,
    pub resume: Histogram,
    pub kafka_lag: Gauge,
    pub owned_partitions: Gauge,
    pub draining: Gauge,
    pub redis_up: Gauge,
    pub fenced: Gauge,
    pub fences: Counter,
    pub assignment_epoch: Gauge,
    pub acked_epoch: Gauge,
    disconnects: CounterFamily,
    /// `reason`: [`Refused`].
    pub refused: CounterFamily,
    /// `reason`: [`InvalidFrame`].
    pub invalid_frames: CounterFamily,
    /// `reason`: [`InvalidRecord`].
    pub invalid_records: CounterFamily,
    /// `reason`: [`ContractError::kind`].
    pub invalid_assignments: CounterFamily,
    /// `kind`: [`KafkaFailure`].
    pub kafka_errors: CounterFamily,
    /// `direction`: [`Direction`].
    pub handoffs: CounterFamily,
    /// `direction`: [`Direction`].
    pub handoff_timeouts: CounterFamily,
    /// `outcome`: [`HeartbeatOutcome`].
    pub heartbeats: CounterFamily,
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
        let registry = Registry::new(
            HELP,
            &[
                ("rtc_socket_delivery_latency_seconds", LATENCY_BUCKETS),
                ("rtc_socket_reconnect_seconds", RECONNECT_BUCKETS),
                ("rtc_socket_resume_seconds", RECONNECT_BUCKETS),
                ("rtc_socket_catchup_scan_records", SCAN_BUCKETS),
            ],
        );
        let gauge = |name: &'static str| registry.gauge(name, &[]);
        let counter = |name: &'static str| registry.counter(name, &[]);
        let family = |name: &'static str, label: &'static str, values: &[&'static str]| {
            registry.family(name, label, values.iter().copied())
        };
        // Owned by peers.rs, which counts through `count`: registered here so
        // the series exist from the start.
        family("rtc_socket_invalid_peer_heartbeats_total", "reason", &ContractError::KINDS);
        let close_reasons = CloseReason::LABELS.iter().copied().chain([CLIENT_GONE]);
        Self {
            connections: gauge("rtc_socket_connections"),
            capacity: gauge("rtc_socket_capacity"),
            cpu: gauge("rtc_socket_cpu_ratio"),
            memory: gauge("rtc_socket_memory_ratio"),
            connects: counter("rtc_socket_connects_total"),
            delivered: counter("rtc_socket_messages_delivered_total"),
            consumed: counter("rtc_socket_messages_consumed_total"),
            received: counter("rtc_socket_messages_received_total"),
            expired: counter("rtc_socket_messages_expired_total"),
            slow_drops: counter("rtc_socket_slow_consumer_drops_total"),
            replayed: counter("rtc_socket_messages_replayed_total"),
            resume_cache_hits: counter("rtc_socket_resume_cache_hits_total"),
            catchup_reads: counter("rtc_socket_catchup_reads_total"),
            catchup_scanned: counter("rtc_socket_catchup_scanned_total"),
            catchup_scan_records: registry.histogram("rtc_socket_catchup_scan_records", &[]),
            resume_unrecovered: family("rtc_socket_resume_unrecovered_total", "reason", ResumeFailure::LABELS),
            memory_budget: gauge("rtc_socket_memory_budget_bytes"),
            held_bytes: gauge("rtc_socket_held_bytes"),
            budget_evictions: family("rtc_socket_budget_evictions_total", "what", Evicted::LABELS),
            delivery_latency: registry.histogram("rtc_socket_delivery_latency_seconds", &[]),
            reconnect: registry.histogram("rtc_socket_reconnect_seconds", &[]),
            resume: registry.histogram("rtc_socket_resume_seconds", &[]),
            kafka_lag: gauge("rtc_socket_kafka_lag"),
            owned_partitions: gauge("rtc_socket_owned_partitions"),
            draining: gauge("rtc_socket_draining"),
            redis_up: gauge("rtc_socket_redis_up"),
            fenced: gauge("rtc_socket_fenced"),
            fences: counter("rtc_socket_fences_total"),
            assignment_epoch: gauge("rtc_socket_assignment_epoch"),
            acked_epoch: gauge("rtc_socket_acked_epoch"),
            disconnects: registry.family("rtc_socket_disconnects_total", "reason", close_reasons),
            refused: family("rtc_socket_refused_total", "reason", Refused::LABELS),
            invalid_frames: family("rtc_socket_invalid_frames_total", "reason", InvalidFrame::LABELS),
            invalid_records: family("rtc_socket_invalid_records_total", "reason", InvalidRecord::LABELS),
            invalid_assignments: family("rtc_socket_invalid_assignments_total", "reason", &ContractError::KINDS),
            kafka_errors: family("rtc_socket_kafka_errors_total", "kind", KafkaFailure::LABELS),
            handoffs: family("rtc_socket_handoffs_total", "direction", Direction::LABELS),
            handoff_timeouts: family("rtc_socket_handoff_timeouts_total", "direction", Direction::LABELS),
            heartbeats: family("rtc_socket_heartbeats_total", "outcome", HeartbeatOutcome::LABELS),
            window: Window::default(),
            registry,
        }
    }

    /// A counter with one label, e.g. `disconnects_total{reason="slow"}`.
    pub fn count(&self, name: &'static str, label: &'static str, value: &'static str) {
        self.registry.counter(name, &[(label, value)]).increment(1);
    }

    /// A session closed: by the server for `reason`, or by the client (`None`).
    pub fn disconnect(&self, reason: Option<CloseReason>) {
        self.disconnects.increment(reason.map_or(CLIENT_GONE, CloseReason::as_str));
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
        self.registry.render()
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
        a.disconnect(Some(CloseReason::Slow));
        a.delivered(12.0);
        let text = a.render();
        assert!(text.contains("rtc_socket_connects_total 3"), "{text}");
        assert!(text.contains("rtc_socket_disconnects_total{reason=\"slow\"} 1"), "{text}");
        // Every closed label list is there from the start, at 0.
        assert!(text.contains("rtc_socket_disconnects_total{reason=\"client\"} 0"), "{text}");
        assert!(text.contains("rtc_socket_refused_total{reason=\"not_owner\"} 0"), "{text}");
        assert!(text.contains("rtc_socket_kafka_errors_total{kind=\"handoff_commit\"} 0"), "{text}");
        assert!(text.contains("rtc_socket_invalid_peer_heartbeats_total{reason=\"json\"} 0"), "{text}");
        assert!(text.contains("rtc_socket_reconnect_seconds_count 0"), "{text}");
        // Every family is described.
        for name in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()) {
            assert!(text.contains(&format!("# HELP {name} ")), "{name} has no help text");
        }
        assert!(text.contains("rtc_socket_delivery_latency_seconds_bucket{le=\"0.02\"} 1"), "{text}");
        assert!(!b.render().contains("rtc_socket_connects_total 3"));
        assert_eq!(a.window.take().delivered, 1);
    }
}
