//! The load balancer's Prometheus metrics (`rtc_lb_*`), on a recorder of its
//! own so several replicas can run in one test process.

use metrics::{Counter, Gauge};
use rtc_core::metrics_export::{CounterFamily, Registry};
use rtc_core::{ContractError, NodeState};

rtc_core::label_values! {
    /// `outcome` of `rtc_lb_route_requests_total`.
    pub enum RouteOutcome {
        Ok => "ok",
        RateLimited => "rate_limited",
        BadUser => "bad_user",
        Unauthorized => "unauthorized",
        NoNode => "no_node",
        OwnerSilent => "owner_silent",
    }
}

rtc_core::label_values! {
    /// `kind` of `rtc_lb_actuation_errors_total`.
    pub enum ActuationFailure {
        Forbidden => "forbidden",
        NotFound => "not_found",
        Conflict => "conflict",
        Config => "config",
        Api => "api",
    }
}

/// `reason`s of `rtc_lb_invalid_heartbeats_total` that `crate::ingest`
/// gives itself, besides the contract's own ([`ContractError::KINDS`]).
pub const INGEST_REJECTIONS: [&str; 2] = ["partition", "stale"];

/// What the leader did about a stored assignment that was not its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssignmentRepair {
    /// Missing (Redis lost its data) or different: written again.
    Rewritten,
    /// The same or a newer epoch was stored: served, and continued from.
    Adopted,
}

impl AssignmentRepair {
    pub const LABELS: [&'static str; 2] = ["rewritten", "adopted"];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rewritten => Self::LABELS[0],
            Self::Adopted => Self::LABELS[1],
        }
    }
}

/// Every metric's `# HELP` text.
const HELP: &[(&str, &str)] = &[
    ("rtc_lb_is_leader", "1 while this replica holds the leader lease"),
    ("rtc_lb_leader_epoch", "Fencing epoch of the lease this replica holds (or last held)"),
    ("rtc_lb_leader_changes_total", "Times this replica became leader"),
    ("rtc_lb_assignment_epoch", "Epoch of the assignment this replica serves"),
    ("rtc_lb_partitions_moved_total", "Partitions moved to another node by assignments this replica published"),
    (
        "rtc_lb_assignment_repairs_total",
        "Times the leader found the stored assignment missing or different (rewritten) or newer than its own (adopted)",
    ),
    ("rtc_lb_heartbeats_total", "Heartbeats read from the stream and applied"),
    (
        "rtc_lb_publishing_held",
        "1 while the leader publishes nothing new: heartbeat reads have not yet succeeded for the dead-after time",
    ),
    ("rtc_lb_invalid_heartbeats_total", "Heartbeats skipped, by reason"),
    ("rtc_lb_heartbeat_lag_seconds", "How far behind the stream's newest heartbeat this replica reads"),
    ("rtc_lb_nodes", "Live socket nodes, by the state they report"),
    ("rtc_lb_desired_replicas", "Socket replicas the last scale decision asks for"),
    ("rtc_lb_current_replicas", "Socket replicas the last scale decision saw"),
    ("rtc_lb_scale_signals_total", "Scale decisions made as leader, by direction and reason code"),
    ("rtc_lb_actuation_errors_total", "Kubernetes calls for a scale-in victim that failed, by kind"),
    ("rtc_lb_route_requests_total", "GET /v1/route answers, by outcome"),
    ("rtc_lb_rate_limiter_clients", "Clients (users or addresses) the route rate limiter holds state for"),
];

pub struct Metrics {
    registry: Registry,
    pub is_leader: Gauge,
    pub leader_epoch: Gauge,
    pub leader_changes: Counter,
    pub assignment_epoch: Gauge,
    pub partitions_moved: Counter,
    pub heartbeats: Counter,
    pub heartbeat_lag: Gauge,
    pub publishing_held: Gauge,
    pub rate_limited_clients: Gauge,
    pub desired_replicas: Gauge,
    pub current_replicas: Gauge,
    nodes: Vec<Gauge>,
    routes: CounterFamily,
    invalid_heartbeats: CounterFamily,
    assignment_repairs: CounterFamily,
    actuation_errors: CounterFamily,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new(HELP, &[]);
        let gauge = |name: &'static str| registry.gauge(name, &[]);
        let counter = |name: &'static str| registry.counter(name, &[]);
        let invalid = ContractError::KINDS.into_iter().chain(INGEST_REJECTIONS);
        Self {
            is_leader: gauge("rtc_lb_is_leader"),
            leader_epoch: gauge("rtc_lb_leader_epoch"),
            leader_changes: counter("rtc_lb_leader_changes_total"),
            assignment_epoch: gauge("rtc_lb_assignment_epoch"),
            partitions_moved: counter("rtc_lb_partitions_moved_total"),
            heartbeats: counter("rtc_lb_heartbeats_total"),
            heartbeat_lag: gauge("rtc_lb_heartbeat_lag_seconds"),
            publishing_held: gauge("rtc_lb_publishing_held"),
            rate_limited_clients: gauge("rtc_lb_rate_limiter_clients"),
            desired_replicas: gauge("rtc_lb_desired_replicas"),
            current_replicas: gauge("rtc_lb_current_replicas"),
            nodes: NodeState::ALL.iter().map(|s| registry.gauge("rtc_lb_nodes", &[("state", s.as_str())])).collect(),
            routes: registry.family("rtc_lb_route_requests_total", "outcome", RouteOutcome::LABELS.iter().copied()),
            invalid_heartbeats: registry.family("rtc_lb_invalid_heartbeats_total", "reason", invalid),
            assignment_repairs: registry.family(
                "rtc_lb_assignment_repairs_total",
                "outcome",
                AssignmentRepair::LABELS.iter().copied(),
            ),
            actuation_errors: registry.family(
                "rtc_lb_actuation_errors_total",
                "kind",
                ActuationFailure::LABELS.iter().copied(),
            ),
            registry,
        }
    }

    pub fn assignment_repaired(&self, repair: AssignmentRepair) {
        self.assignment_repairs.increment(repair.as_str());
    }

    pub fn route(&self, outcome: RouteOutcome) {
        self.routes.increment(outcome.as_str());
    }

    pub fn actuation_error(&self, kind: ActuationFailure) {
        self.actuation_errors.increment(kind.as_str());
    }

    /// `rtc_lb_nodes{state}`: live nodes in `state`.
    pub fn nodes(&self, state: NodeState, n: usize) {
        let i = NodeState::ALL.iter().position(|s| *s == state).expect("ALL lists every state");
        self.nodes[i].set(n as f64);
    }

    /// A counter whose label values are not a closed list (the scale
    /// engine's reason codes): its series appear with their first event.
    pub fn count_labels(&self, name: &'static str, labels: &[(&'static str, &'static str)]) {
        self.registry.counter(name, labels).increment(1);
    }

    pub fn render(&self) -> String {
        self.registry.render()
    }
}

impl crate::ingest::IngestObserver for Metrics {
    fn invalid(&self, reason: &'static str) {
        self.invalid_heartbeats.increment(reason);
    }

    fn ingested(&self, taken: usize, lag_seconds: f64) {
        self.heartbeats.increment(taken as u64);
        self.heartbeat_lag.set(lag_seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::IngestObserver;

    #[test]
    fn closed_label_lists_exist_from_the_start() {
        let m = Metrics::new();
        m.route(RouteOutcome::Ok);
        m.invalid("stale");
        let text = m.render();
        assert!(text.contains(r#"rtc_lb_route_requests_total{outcome="ok"} 1"#), "{text}");
        assert!(text.contains(r#"rtc_lb_invalid_heartbeats_total{reason="stale"} 1"#), "{text}");
        for series in [
            r#"rtc_lb_route_requests_total{outcome="no_node"} 0"#,
            r#"rtc_lb_invalid_heartbeats_total{reason="missing_field"} 0"#,
            r#"rtc_lb_invalid_heartbeats_total{reason="partition"} 0"#,
            r#"rtc_lb_actuation_errors_total{kind="forbidden"} 0"#,
            r#"rtc_lb_nodes{state="draining"} 0"#,
            "# HELP rtc_lb_route_requests_total",
        ] {
            assert!(text.contains(series), "{series} in {text}");
        }
    }
}
