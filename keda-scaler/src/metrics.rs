//! The scaler's Prometheus metrics (`rtc_scaler_*`), on a recorder of its
//! own so several scalers can run in one test process. Request counters and
//! latency histograms are registered up front: the hot path only indexes.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use rtc_core::metrics_export::{CounterFamily, Registry};

use crate::cache::{Reading, Snapshot};

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

/// `code` label values of `rtc_scaler_grpc_errors_total`: the gRPC status
/// codes, indexed by their number.
const GRPC_CODES: [&str; 17] = [
    "ok",
    "cancelled",
    "unknown",
    "invalid_argument",
    "deadline_exceeded",
    "not_found",
    "already_exists",
    "permission_denied",
    "resource_exhausted",
    "failed_precondition",
    "aborted",
    "out_of_range",
    "unimplemented",
    "internal",
    "unavailable",
    "data_loss",
    "unauthenticated",
];

/// `outcome` label values: `ok` or why the answer was UNAVAILABLE.
pub const OUTCOMES: [&str; 6] = ["ok", "not_loaded", "redis_unreachable", "missing", "malformed", "stale"];

rtc_core::label_values! {
    /// `outcome` of `rtc_scaler_redis_reads_total`.
    pub enum RedisRead { Ok => "ok", Error => "error", Missing => "missing", Malformed => "malformed" }
}

impl RedisRead {
    fn of(reading: &Reading) -> Self {
        match reading {
            Reading::RedisUnreachable(_) => Self::Error,
            Reading::Missing => Self::Missing,
            Reading::Malformed(_) => Self::Malformed,
            Reading::Decision(_) | Reading::NotLoaded => Self::Ok,
        }
    }
}

/// Every metric's `# HELP` text.
const HELP: &[(&str, &str)] = &[
    ("rtc_scaler_requests_total", "gRPC requests answered, by RPC and outcome (ok, or why UNAVAILABLE)"),
    ("rtc_scaler_request_duration_seconds", "Time to answer a gRPC request, by RPC"),
    ("rtc_scaler_desired_replicas", "desired_replicas of the last decision read"),
    ("rtc_scaler_decision_age_seconds", "Age of the last decision read"),
    ("rtc_scaler_decision_fresh", "1 while the decision is within its staleness bound"),
    ("rtc_scaler_redis_up", "1 when the last read of the decision reached Redis"),
    ("rtc_scaler_redis_reads_total", "Reads of the decision key, by outcome"),
    ("rtc_scaler_streams_open", "Open StreamIsActive streams"),
    (
        "rtc_scaler_grpc_errors_total",
        "gRPC calls answered with an error status, by code: undecodable requests are `internal`, unknown methods `unimplemented`",
    ),
    ("rtc_scaler_stream_messages_total", "Messages sent on StreamIsActive streams"),
];

pub struct Metrics {
    registry: Registry,
    requests: Vec<Vec<Counter>>,
    latency: Vec<Histogram>,
    redis_reads: CounterFamily,
    grpc_errors: CounterFamily,
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
        let registry = Registry::new(HELP, &[("rtc_scaler_request_duration_seconds", &LATENCY_BUCKETS)]);
        let gauge = |name: &'static str| registry.gauge(name, &[]);
        let requests = Rpc::ALL
            .iter()
            .map(|rpc| {
                OUTCOMES
                    .iter()
                    .map(|outcome| {
                        registry.counter("rtc_scaler_requests_total", &[("rpc", rpc.as_str()), ("outcome", outcome)])
                    })
                    .collect()
            })
            .collect();
        let latency = Rpc::ALL
            .iter()
            .map(|rpc| registry.histogram("rtc_scaler_request_duration_seconds", &[("rpc", rpc.as_str())]))
            .collect();
        Self {
            requests,
            latency,
            redis_reads: registry.family("rtc_scaler_redis_reads_total", "outcome", RedisRead::LABELS.iter().copied()),
            grpc_errors: registry.family("rtc_scaler_grpc_errors_total", "code", GRPC_CODES[1..].iter().copied()),
            desired_replicas: gauge("rtc_scaler_desired_replicas"),
            decision_age: gauge("rtc_scaler_decision_age_seconds"),
            decision_fresh: gauge("rtc_scaler_decision_fresh"),
            redis_up: gauge("rtc_scaler_redis_up"),
            streams_open: gauge("rtc_scaler_streams_open"),
            stream_messages: registry.counter("rtc_scaler_stream_messages_total", &[]),
            registry,
        }
    }

    /// Counts one answered request and its latency.
    pub fn request(&self, rpc: Rpc, outcome: &'static str, took: Duration) {
        let index = Rpc::ALL.iter().position(|r| *r == rpc).unwrap_or(0);
        let o = OUTCOMES.iter().position(|x| *x == outcome).unwrap_or(0);
        self.requests[index][o].increment(1);
        self.latency[index].record(took.as_secs_f64());
    }

    /// Counts a call answered with the `grpc-status` header `status` (a
    /// trailers-only answer: every error of a unary call, including a
    /// request that did not decode). `0` (OK) and unknown values are not
    /// errors.
    pub fn grpc_status(&self, status: &[u8]) {
        let code = std::str::from_utf8(status).ok().and_then(|s| s.parse::<usize>().ok());
        if let Some(&name) = code.filter(|c| *c > 0).and_then(|c| GRPC_CODES.get(c)) {
            self.grpc_errors.increment(name);
        }
    }

    /// Counts one read of the decision key by outcome.
    pub fn redis_read(&self, reading: &Reading) {
        self.redis_reads.increment(RedisRead::of(reading).as_str());
    }

    /// Sets the decision gauges from the cache at `now_ms`.
    pub fn observe(&self, snapshot: &Snapshot, now_ms: u64, max_age: Duration) {
        self.redis_up.set(if snapshot.redis_reachable() { 1.0 } else { 0.0 });
        self.decision_fresh.set(if snapshot.fresh(now_ms, max_age).is_ok() { 1.0 } else { 0.0 });
        if let Reading::Decision(d) = &snapshot.reading {
            self.desired_replicas.set(f64::from(d.desired_replicas));
            self.decision_age.set(d.age_ms(snapshot.redis_now(now_ms)) as f64 / 1000.0);
        }
    }

    pub fn render(&self) -> String {
        self.registry.render()
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
        assert!(text.contains(r#"rtc_scaler_requests_total{rpc="IsActive",outcome="stale"} 0"#), "{text}");
        assert!(text.contains(r#"rtc_scaler_redis_reads_total{outcome="malformed"} 0"#), "{text}");
        assert!(text.contains("# HELP rtc_scaler_redis_reads_total"), "{text}");
    }

    #[test]
    fn outcomes_list_every_unavailable_kind() {
        use crate::cache::Unavailable;
        let all = [
            Unavailable::NotLoaded,
            Unavailable::RedisUnreachable(String::new()),
            Unavailable::Missing,
            Unavailable::Malformed(rtc_core::ContractError::Json(String::new())),
            Unavailable::Stale { age_ms: 2, max_age_ms: 1 },
        ];
        for why in all {
            assert!(OUTCOMES.contains(&why.kind()), "{}", why.kind());
        }
    }
}
