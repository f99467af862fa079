//! What the scaling engine looks at: per-node and fleet signals from the
//! heartbeat history, with their trends. Pure.

use std::collections::BTreeSet;

use rtc_core::NodeState;
use serde::Serialize;

use crate::fleet::{Fleet, Reading};

/// One live node's latest figures and trends.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeSignals {
    pub id: String,
    pub state: NodeState,
    /// Ready and not being drained by the load balancer: it takes users.
    pub serving: bool,
    pub connections: u64,
    pub capacity: u64,
    pub cpu: f64,
    pub memory: f64,
    pub mps_out: f64,
    pub p95_latency_ms: f64,
    pub kafka_lag: u64,
}

impl NodeSignals {
    pub fn connections_fraction(&self) -> f64 {
        fraction(self.connections as f64, self.capacity as f64)
    }
}

/// The fleet as one: sums over live nodes, averages and maxima over the
/// serving ones.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct FleetSignals {
    pub nodes: Vec<NodeSignals>,
    /// Nodes alive (any state).
    pub live: u32,
    /// Nodes taking users.
    pub serving: u32,
    pub starting: u32,
    /// Users connected anywhere (draining nodes' users are moving, so they
    /// still count as load).
    pub connections: u64,
    /// Mean capacity of a live node (0 with no node).
    pub node_capacity: f64,
    /// Connections over the serving nodes' capacity.
    pub connections_fraction: f64,
    pub max_connections_fraction: f64,
    /// Sum of CPU fractions (in node units), and its mean and max over the
    /// serving nodes; likewise memory.
    pub cpu_total: f64,
    pub cpu_mean: f64,
    pub cpu_max: f64,
    pub memory_total: f64,
    pub memory_mean: f64,
    pub memory_max: f64,
    /// The part of a serving node's CPU (memory) that stays on it whatever
    /// its users (runtime, buffers, caches): it does not move when nodes
    /// come or go. See [`fixed_part`].
    pub cpu_fixed: f64,
    pub memory_fixed: f64,
    pub mps_out: f64,
    pub p95_mean_ms: f64,
    pub p95_max_ms: f64,
    pub lag_mean: f64,
    pub lag_max: u64,
    /// Sustained trends of the fleet totals, per second.
    pub connections_slope: f64,
    pub cpu_slope: f64,
    pub memory_slope: f64,
    pub mps_slope: f64,
}

fn fraction(part: f64, whole: f64) -> f64 {
    if whole > 0.0 { part / whole } else { 0.0 }
}

/// A least-squares line through `(x, y)` points, with the standard errors
/// of its slope and intercept.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Fit {
    slope: f64,
    slope_error: f64,
    intercept: f64,
    intercept_error: f64,
}

/// None for fewer than three points or no spread in x.
fn least_squares(points: &[(f64, f64)]) -> Option<Fit> {
    let n = points.len() as f64;
    if points.len() < 3 {
        return None;
    }
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx < 1e-9 {
        return None;
    }
    let slope = sxy / sxx;
    let variance = points.iter().map(|p| (p.1 - my - slope * (p.0 - mx)).powi(2)).sum::<f64>() / (n - 2.0);
    Some(Fit {
        slope,
        slope_error: (variance / sxx).sqrt(),
        intercept: my - slope * mx,
        intercept_error: (variance * (1.0 / n + mx * mx / sxx)).sqrt(),
    })
}

/// A serving node's fixed part of a signal: the intercept of the signal
/// against connections over the serving nodes' readings, less two standard errors,
/// within 0 and the least node's value. Only a signal shown to grow with
/// connections (slope over two standard errors) has one: when the nodes are
/// too alike or too few to tell, or the signal follows something else
/// (partitions, a cache), all of it is taken to move, as the HPA takes it.
fn fixed_part(points: &[(f64, f64)]) -> f64 {
    let Some(fit) = least_squares(points).filter(|f| f.slope > 2.0 * f.slope_error) else { return 0.0 };
    let least = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    (fit.intercept - 2.0 * fit.intercept_error).clamp(0.0, least.max(0.0))
}

/// The part of a slope that noise does not explain: shrunk towards 0 by two
/// standard errors (a slope within them is 0). Traffic jitters second by
/// second; a fleet sitting just under a target must not add a node for a
/// rise that is only the jitter's.
fn confident_slope(points: &[(f64, f64)]) -> f64 {
    let Some(Fit { slope, slope_error, .. }) = least_squares(points) else { return 0.0 };
    let margin = 2.0 * slope_error;
    if slope > margin {
        slope - margin
    } else if slope < -margin {
        slope + margin
    } else {
        0.0
    }
}

/// A sustained trend: the confident slope of each half of the series, kept
/// only when both halves agree in sign, and then the smaller. A ramp
/// passes; a step (a spike, or users moving between nodes) has one flat
/// half and gives 0: steps are urgency's business, not the prediction's.
fn sustained_slope(points: &[(f64, f64)]) -> f64 {
    let (first, second) = points.split_at(points.len() / 2);
    let (a, b) = (confident_slope(first), confident_slope(second));
    if a > 0.0 && b > 0.0 {
        a.min(b)
    } else if a < 0.0 && b < 0.0 {
        a.max(b)
    } else {
        0.0
    }
}

/// Fleet totals per second over the trend window: each node counts with
/// its latest sample at that second, a node that stopped (a drained victim)
/// until the second after its last one. Totals do not jump when users move
/// between nodes, so their trend is the load's: counting only the nodes
/// alive now would read a drain's users arriving on the survivors as a
/// rising load (and hold the next scale-in back a whole window).
fn fleet_series(
    fleet: &Fleet,
    live: &BTreeSet<&str>,
    now_ms: u64,
    window_ms: u64,
    value: impl Fn(&Reading) -> f64,
) -> Vec<(f64, f64)> {
    let since = now_ms.saturating_sub(window_ms);
    let seconds = (now_ms.saturating_sub(since) / 1000) as usize;
    let second_of = |ms: u64| (ms.saturating_sub(since).div_ceil(1000) as usize).min(seconds + 1);
    let mut totals = vec![0.0; seconds + 1];
    // The first second every node alive now had reported by: the start of
    // a new node's history is not a rise in load.
    let mut first_full = 0;
    for (id, record) in fleet.records().filter(|(_, r)| r.last_seen_ms() >= since) {
        let alive = live.contains(&id.as_str());
        let samples: Vec<&Reading> = record.since(since).collect();
        for (i, sample) in samples.iter().enumerate() {
            let from = second_of(sample.received_ms);
            let until = match samples.get(i + 1) {
                Some(next) => second_of(next.received_ms),
                None if alive => seconds + 1,
                None => (from + 1).min(seconds + 1),
            };
            if i == 0 && alive {
                first_full = first_full.max(from);
            }
            // (An empty range if this host's clock stepped back.)
            for total in totals.iter_mut().take(until).skip(from) {
                *total += value(sample);
            }
        }
    }
    (first_full..=seconds).map(|s| (s as f64, totals[s])).collect()
}

/// The sustained trend (per second) of a fleet total, if the series spans
/// at least half the window.
fn trend(fleet: &Fleet, live: &BTreeSet<&str>, now_ms: u64, window_ms: u64, value: impl Fn(&Reading) -> f64) -> f64 {
    let series = fleet_series(fleet, live, now_ms, window_ms, value);
    if (series.len() as u64) * 1000 < window_ms / 2 { 0.0 } else { sustained_slope(&series) }
}

/// Signals of the live nodes at `now_ms`. Nodes in `excluded` (being
/// drained or removed by the load balancer) are not serving.
pub fn fleet_signals(fleet: &Fleet, now_ms: u64, trend_window_ms: u64, excluded: &BTreeSet<String>) -> FleetSignals {
    let mut nodes = Vec::new();
    for (id, record) in fleet.records() {
        if !fleet.is_alive(id, now_ms) {
            continue;
        }
        let hb = record.latest();
        nodes.push(NodeSignals {
            id: id.clone(),
            state: hb.state,
            serving: hb.state == NodeState::Ready && !excluded.contains(id),
            connections: hb.connections,
            capacity: hb.capacity,
            cpu: hb.cpu,
            memory: hb.memory,
            mps_out: hb.mps_out,
            p95_latency_ms: hb.p95_latency_ms,
            kafka_lag: hb.kafka_lag,
        });
    }
    summarise(nodes, fleet, now_ms, trend_window_ms)
}

fn summarise(nodes: Vec<NodeSignals>, fleet: &Fleet, now_ms: u64, trend_window_ms: u64) -> FleetSignals {
    let serving: Vec<&NodeSignals> = nodes.iter().filter(|n| n.serving).collect();
    let k = serving.len() as f64;
    let mean =
        |f: &dyn Fn(&NodeSignals) -> f64| if k > 0.0 { serving.iter().map(|n| f(n)).sum::<f64>() / k } else { 0.0 };
    let max = |f: &dyn Fn(&NodeSignals) -> f64| serving.iter().map(|n| f(n)).fold(0.0, f64::max);
    let serving_capacity: u64 = serving.iter().map(|n| n.capacity).sum();
    let connections: u64 = nodes.iter().map(|n| n.connections).sum();
    let live: BTreeSet<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    let trend_of = |value: fn(&Reading) -> f64| trend(fleet, &live, now_ms, trend_window_ms, value);
    // Fitted over the serving nodes' readings in the trend window: nodes
    // differ in users, and each node's users change over time.
    let since = now_ms.saturating_sub(trend_window_ms);
    let readings: Vec<&Reading> =
        serving.iter().filter_map(|n| fleet.record(&n.id)).flat_map(|r| r.since(since)).collect();
    let fixed_of = |value: fn(&Reading) -> f64| {
        fixed_part(&readings.iter().map(|r| (r.connections as f64, value(r))).collect::<Vec<_>>())
    };
    FleetSignals {
        live: nodes.len() as u32,
        serving: serving.len() as u32,
        starting: nodes.iter().filter(|n| n.state == NodeState::Starting).count() as u32,
        connections,
        node_capacity: fraction(nodes.iter().map(|n| n.capacity as f64).sum(), nodes.len() as f64),
        connections_fraction: fraction(connections as f64, serving_capacity as f64),
        max_connections_fraction: max(&|n| n.connections_fraction()),
        cpu_total: serving.iter().map(|n| n.cpu).sum(),
        cpu_mean: mean(&|n| n.cpu),
        cpu_max: max(&|n| n.cpu),
        memory_total: serving.iter().map(|n| n.memory).sum(),
        memory_mean: mean(&|n| n.memory),
        memory_max: max(&|n| n.memory),
        cpu_fixed: fixed_of(|n| n.cpu),
        memory_fixed: fixed_of(|n| n.memory),
        mps_out: nodes.iter().map(|n| n.mps_out).sum(),
        p95_mean_ms: mean(&|n| n.p95_latency_ms),
        p95_max_ms: max(&|n| n.p95_latency_ms),
        lag_mean: mean(&|n| n.kafka_lag as f64),
        lag_max: serving.iter().map(|n| n.kafka_lag).max().unwrap_or(0),
        connections_slope: trend_of(|h| h.connections as f64),
        cpu_slope: trend_of(|h| h.cpu),
        memory_slope: trend_of(|h| h.memory),
        mps_slope: trend_of(|h| h.mps_out),
        nodes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scale::sim::heartbeat;

    #[test]
    fn sums_means_and_slopes() {
        let mut fleet = Fleet::new(1000, 300_000);
        for t in 0..=10u64 {
            let mut a = heartbeat("a", t + 1, t * 1000, NodeState::Ready);
            a.connections = 100 + 10 * t; // +10/s
            a.cpu = 0.2;
            let mut b = heartbeat("b", t + 1, t * 1000, NodeState::Ready);
            b.connections = 300;
            b.cpu = 0.6;
            b.p95_latency_ms = 40.0;
            fleet.observe(a, t * 1000).unwrap();
            fleet.observe(b, t * 1000).unwrap();
        }
        let s = fleet_signals(&fleet, 10_000, 20_000, &BTreeSet::new());
        assert_eq!((s.live, s.serving, s.connections), (2, 2, 500));
        assert!((s.connections_fraction - 0.25).abs() < 1e-9, "{}", s.connections_fraction);
        assert!((s.connections_slope - 10.0).abs() < 1e-6, "{}", s.connections_slope);
        assert!((s.cpu_mean - 0.4).abs() < 1e-9 && (s.cpu_max - 0.6).abs() < 1e-9);
        assert!((s.max_connections_fraction - 0.3).abs() < 1e-9);
        assert_eq!(s.p95_max_ms, 40.0);
        // Less history than half the trend window: no trend.
        assert_eq!(fleet_signals(&fleet, 10_000, 60_000, &BTreeSet::new()).connections_slope, 0.0);
        // Excluding b: its users still count, its capacity does not.
        let s = fleet_signals(&fleet, 10_000, 20_000, &BTreeSet::from(["b".to_owned()]));
        assert_eq!((s.live, s.serving, s.connections), (2, 1, 500));
        assert!((s.connections_fraction - 0.5).abs() < 1e-9);
        assert!((s.cpu_mean - 0.2).abs() < 1e-9);
    }

    /// Two nodes, 60 s of heartbeats; `users(node, second)`.
    fn two_nodes(users: impl Fn(usize, u64) -> u64) -> FleetSignals {
        let mut fleet = Fleet::new(1000, 300_000);
        for t in 0..=60u64 {
            for (i, id) in ["a", "b"].into_iter().enumerate() {
                let mut hb = heartbeat(id, t + 1, t * 1000, NodeState::Ready);
                hb.connections = users(i, t);
                fleet.observe(hb, t * 1000).unwrap();
            }
        }
        fleet_signals(&fleet, 60_000, 60_000, &BTreeSet::new())
    }

    #[test]
    fn a_ramp_is_a_trend_a_step_or_a_move_is_not() {
        let ramp = two_nodes(|_, t| 100 + 2 * t);
        assert!((ramp.connections_slope - 4.0).abs() < 1e-6, "{}", ramp.connections_slope);
        let step = two_nodes(|_, t| if t < 45 { 100 } else { 400 });
        assert_eq!(step.connections_slope, 0.0);
        // Users moving from a to b: the fleet total does not change.
        let moved = two_nodes(|i, t| match (i, t < 30) {
            (0, true) => 300,
            (0, false) => 0,
            (_, true) => 0,
            _ => 300,
        });
        assert_eq!(moved.connections_slope, 0.0);
        let falling = two_nodes(|_, t| 500 - 3 * t);
        assert!((falling.connections_slope + 6.0).abs() < 1e-6, "{}", falling.connections_slope);
    }

    #[test]
    fn the_fixed_part_is_the_intercept_a_signal_shows_it_has() {
        let line = |x: f64| (x, 0.15 + 0.0004 * x);
        let spread: Vec<_> = [30.0, 45.0, 60.0, 25.0, 700.0].into_iter().map(line).collect();
        assert!((fixed_part(&spread) - 0.15).abs() < 1e-6, "{}", fixed_part(&spread));
        // Noisy readings: less than the intercept, never below 0.
        let noisy: Vec<_> =
            (0..40).map(|i| (i as f64 * 10.0, 0.15 + 0.0004 * i as f64 * 10.0 + 0.01 * (i % 3) as f64)).collect();
        let fixed = fixed_part(&noisy);
        assert!((0.1..0.16).contains(&fixed), "{fixed}");
        // Not growing with users (a cache per partition, say): all of it moves.
        let flat: Vec<_> = [30.0, 45.0, 60.0, 25.0].into_iter().map(|x| (x, 0.45)).collect();
        assert_eq!(fixed_part(&flat), 0.0);
        // Too few readings, or all alike in users: nothing to tell.
        assert_eq!(fixed_part(&spread[..2]), 0.0);
        assert_eq!(fixed_part(&[(50.0, 0.2), (50.0, 0.3), (50.0, 0.25)]), 0.0);
    }

    #[test]
    fn jitter_is_not_a_trend_a_ramp_through_it_is() {
        // ±30 users of deterministic jitter per node and second.
        let jitter = |i: usize, t: u64| (t * 7919 + i as u64 * 104_729) % 61;
        let flat = two_nodes(|i, t| 3000 + jitter(i, t));
        assert_eq!(flat.connections_slope, 0.0);
        // A true rise of 2 × 20 users/s: found, shrunk by its uncertainty.
        let ramp = two_nodes(|i, t| 3000 + 20 * t + jitter(i, t));
        assert!((30.0..40.5).contains(&ramp.connections_slope), "{}", ramp.connections_slope);
    }

    #[test]
    fn a_drained_node_that_stopped_is_not_a_rise_on_the_survivors() {
        // c's 600 users move to a and b over a minute of drains, then c
        // stops: the survivors rise, the load does not.
        let mut fleet = Fleet::new(1000, 300_000);
        for t in 0..=60u64 {
            for id in ["a", "b", "c"] {
                if id == "c" && t > 55 {
                    continue;
                }
                let mut hb = heartbeat(id, t + 1, t * 1000, NodeState::Ready);
                let moved = 10 * t.min(60);
                hb.connections = if id == "c" { 600 - moved } else { 100 + moved / 2 };
                fleet.observe(hb, t * 1000).unwrap();
            }
        }
        let s = fleet_signals(&fleet, 60_000, 60_000, &BTreeSet::new());
        assert_eq!((s.live, s.connections), (2, 800));
        assert_eq!(s.connections_slope, 0.0);
    }
}
