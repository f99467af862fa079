//! The per-second timeline and the final report (pure: built from
//! snapshots of the ledger and the counters).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::ledger::{Summary, Totals};
use crate::producer::ProducerReport;
use crate::stats::Stats;

/// The state of the run at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub ts_ms: i64,
    pub elapsed_ms: u64,
    /// Users the profile asks for now.
    pub target: u64,
    /// Users with a welcomed session open.
    pub users_online: u64,
    /// Users connecting or reconnecting.
    pub connecting: u64,
    pub totals: Totals,
    pub reconnects: u64,
    pub reconnect_p99_ms: u64,
    pub reconnect_max_ms: u64,
    pub route_errors: u64,
    pub double_sessions: u64,
}

/// One line of `--timeline`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TimelineLine {
    pub ts_ms: i64,
    pub elapsed_s: f64,
    pub target_users: u64,
    pub users_online: u64,
    pub connecting: u64,
    pub messages_sent_per_s: f64,
    pub delivered_per_s: f64,
    pub duplicates_per_s: f64,
    /// Reconnects completed in this interval.
    pub reconnects: u64,
    pub reconnects_total: u64,
    pub reconnect_p99_ms_so_far: u64,
    pub reconnect_max_ms_so_far: u64,
    /// Messages produced to online users and not delivered yet.
    pub in_flight: u64,
    pub route_errors_total: u64,
    pub double_sessions: u64,
    /// This interval's produce-to-receive latencies, ms → count (merge
    /// lines for the distribution over a longer window).
    pub latency_ms: BTreeMap<u64, u64>,
    /// This interval's completed reconnects (disconnect → `welcome`), ms →
    /// count.
    pub reconnect_ms: BTreeMap<u64, u64>,
}

/// One timeline line: rates over `prev`..`cur`, and the delivery latencies
/// and reconnect times recorded in between.
pub fn timeline_line(
    prev: &Snapshot,
    cur: &Snapshot,
    latency_ms: BTreeMap<u64, u64>,
    reconnect_ms: BTreeMap<u64, u64>,
) -> TimelineLine {
    let secs = (cur.elapsed_ms.saturating_sub(prev.elapsed_ms) as f64 / 1000.0).max(0.001);
    let per_s = |a: u64, b: u64| ((b.saturating_sub(a)) as f64 / secs * 10.0).round() / 10.0;
    TimelineLine {
        ts_ms: cur.ts_ms,
        elapsed_s: (cur.elapsed_ms as f64 / 100.0).round() / 10.0,
        target_users: cur.target,
        users_online: cur.users_online,
        connecting: cur.connecting,
        messages_sent_per_s: per_s(prev.totals.acked, cur.totals.acked),
        delivered_per_s: per_s(prev.totals.delivered, cur.totals.delivered),
        duplicates_per_s: per_s(prev.totals.duplicates, cur.totals.duplicates),
        reconnects: cur.reconnects.saturating_sub(prev.reconnects),
        reconnects_total: cur.reconnects,
        reconnect_p99_ms_so_far: cur.reconnect_p99_ms,
        reconnect_max_ms_so_far: cur.reconnect_max_ms,
        in_flight: cur.totals.pending,
        route_errors_total: cur.route_errors,
        double_sessions: cur.double_sessions,
        latency_ms,
        reconnect_ms,
    }
}

/// The final report (`--report`, and one line on stdout).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub run_id: String,
    pub started_at_ms: i64,
    pub ended_at_ms: i64,
    pub duration_s: f64,
    pub profile: String,
    pub rate: f64,
    #[serde(flatten)]
    pub messages: Summary,
    pub double_sessions: u64,
    pub reconnects: u64,
    pub reconnect_p50_ms: u64,
    pub reconnect_p99_ms: u64,
    pub reconnect_max_ms: u64,
    pub reconnects_by_reason: BTreeMap<String, u64>,
    pub reconnects_abandoned: u64,
    pub peak_users: u64,
    pub peak_target: u64,
    pub route_errors: BTreeMap<String, u64>,
    pub route_errors_total: u64,
    pub route_failovers: u64,
    pub connect_errors: BTreeMap<String, u64>,
    pub stopped_by_server: BTreeMap<String, u64>,
    pub gave_up: u64,
    pub error_frames: BTreeMap<String, u64>,
    pub unrecovered_resumes: BTreeMap<String, u64>,
    pub unparsed_frames: u64,
    pub producer: ProducerReport,
    /// No loss, no double session, nothing misrouted, delivered twice under
    /// two ids or out of order, and every acknowledged message delivered.
    pub ok: bool,
}

/// Everything [`build`] needs besides the ledger and the counters.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub run_id: String,
    pub started_at_ms: i64,
    pub ended_at_ms: i64,
    pub profile: String,
    pub rate: f64,
    pub peak_users: u64,
    pub peak_target: u64,
}

pub fn build(info: RunInfo, messages: Summary, stats: &Stats, producer: ProducerReport) -> Report {
    let r = &stats.reconnect;
    let ok = messages.messages_lost == 0
        && stats.double_sessions == 0
        && messages.misrouted == 0
        && messages.duplicate_deliveries == 0
        && messages.order_violations == 0
        && messages.messages_delivered >= messages.messages_sent;
    Report {
        run_id: info.run_id,
        started_at_ms: info.started_at_ms,
        ended_at_ms: info.ended_at_ms,
        duration_s: ((info.ended_at_ms - info.started_at_ms).max(0) as f64 / 100.0).round() / 10.0,
        profile: info.profile,
        rate: info.rate,
        double_sessions: stats.double_sessions,
        reconnects: r.count(),
        reconnect_p50_ms: r.quantile(0.5).unwrap_or(0),
        reconnect_p99_ms: r.quantile(0.99).unwrap_or(0),
        reconnect_max_ms: r.max().unwrap_or(0),
        reconnects_by_reason: stats.reconnect_reasons.clone(),
        reconnects_abandoned: stats.reconnects_abandoned,
        peak_users: info.peak_users,
        peak_target: info.peak_target,
        route_errors_total: stats.route_errors.values().sum(),
        route_errors: stats.route_errors.clone(),
        route_failovers: stats.route_failovers,
        connect_errors: stats.connect_errors.clone(),
        stopped_by_server: stats.stopped_by_server.clone(),
        gave_up: stats.gave_up,
        error_frames: stats.error_frames.clone(),
        unrecovered_resumes: stats.unrecovered_resumes.clone(),
        unparsed_frames: stats.unparsed_frames,
        producer,
        messages,
        ok,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Ledger;

    #[test]
    fn timeline_rates_are_per_second() {
        let prev = Snapshot {
            elapsed_ms: 1000,
            totals: Totals { acked: 100, delivered: 90, ..Totals::default() },
            reconnects: 3,
            ..Snapshot::default()
        };
        let cur = Snapshot {
            ts_ms: 77,
            elapsed_ms: 3000,
            target: 40,
            users_online: 38,
            connecting: 2,
            totals: Totals { acked: 200, delivered: 190, duplicates: 4, pending: 10, ..Totals::default() },
            reconnects: 7,
            reconnect_p99_ms: 420,
            reconnect_max_ms: 800,
            route_errors: 1,
            double_sessions: 0,
        };
        let line = timeline_line(&prev, &cur, BTreeMap::from([(12, 3), (40, 1)]), BTreeMap::from([(350, 4)]));
        assert_eq!(line.messages_sent_per_s, 50.0);
        assert_eq!(line.delivered_per_s, 50.0);
        assert_eq!(line.duplicates_per_s, 2.0);
        assert_eq!((line.reconnects, line.reconnects_total, line.reconnect_p99_ms_so_far), (4, 7, 420));
        assert_eq!((line.users_online, line.connecting, line.target_users, line.in_flight), (38, 2, 40, 10));
        assert_eq!(line.elapsed_s, 3.0);
        let v = serde_json::to_value(&line).unwrap();
        for key in ["ts_ms", "users_online", "connecting", "messages_sent_per_s", "delivered_per_s", "reconnects"] {
            assert!(v.get(key).is_some(), "{key}");
        }
        assert!(v.get("reconnect_p99_ms_so_far").is_some());
        assert_eq!(v["latency_ms"], serde_json::json!({"12": 3, "40": 1}));
        assert_eq!(v["reconnect_ms"], serde_json::json!({"350": 4}));
    }

    #[test]
    fn the_report_has_the_documented_fields() {
        let mut ledger = Ledger::new("r", "lg-");
        let u = ledger.join();
        ledger.welcomed(u, 0);
        let (seq, _) = ledger.produce(0, 0).unwrap();
        ledger.acked(seq, true);
        let mut stats = Stats::default();
        stats.reconnected(300, "rebalance");
        Stats::count(&mut stats.route_errors, "503");
        Stats::count(&mut stats.route_errors, "503");
        let info = RunInfo {
            run_id: "r".into(),
            started_at_ms: 1000,
            ended_at_ms: 11_000,
            profile: "plateau:10s:1".into(),
            rate: 1.0,
            peak_users: 1,
            peak_target: 1,
        };
        let report = build(info, ledger.summary(5), &stats, ProducerReport::default());
        assert!(!report.ok, "one message was lost");
        let v = serde_json::to_value(&report).unwrap();
        for key in [
            "messages_sent",
            "messages_delivered",
            "messages_lost",
            "duplicates",
            "double_sessions",
            "reconnects",
            "reconnect_p50_ms",
            "reconnect_p99_ms",
            "reconnect_max_ms",
            "peak_users",
            "route_errors",
        ] {
            assert!(v.get(key).is_some(), "{key} missing from {v}");
        }
        assert_eq!(v["messages_lost"], 1);
        assert_eq!(v["reconnect_p99_ms"], 300);
        assert_eq!(v["route_errors"]["503"], 2);
        assert_eq!(v["route_errors_total"], 2);
        assert_eq!(v["duration_s"], 10.0);
        assert_eq!(v["lost_sample"][0]["user"], "lg-0");
    }
}
