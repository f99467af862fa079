//! `scale-report` on tiny hand-made traces, where every figure can be
//! worked out by hand, and its determinism.

use rtc_load_balancer::scale::ScaleConfig;
use rtc_load_balancer::scale_report::cluster::ClusterArgs;
use rtc_load_balancer::scale_report::figures::Figures;
use rtc_load_balancer::scale_report::simulate;
use rtc_load_balancer::scale_report::traces::{Sample, Trace};

/// Nodes of 100 users whose CPU reaches its request exactly when full, 12
/// partitions with a twelfth of the users each.
fn small_cluster() -> ClusterArgs {
    ClusterArgs {
        capacity: 100,
        cpu_idle: 0.05,
        cpu_per_connection: 0.0095,
        cpu_per_msg: 0.0,
        partitions: 12,
        ..ClusterArgs::default()
    }
}

/// 100 users for 300 s, then 240 for 300 s; no messages.
fn two_step() -> Trace {
    let samples = (0..600).map(|t| Sample { users: if t < 300 { 100.0 } else { 240.0 }, msgs_per_s: 0.0 }).collect();
    Trace { name: "two-step".into(), samples }
}

fn figures(policy: &str) -> Figures {
    let config = ScaleConfig { min_replicas: 2, max_replicas: 50, ..ScaleConfig::default() };
    simulate(&two_step(), policy, &config, &small_cluster(), &[1.0 / 12.0; 12]).figures
}

/// What every policy shares: 2 nodes (6 partitions, 50 users each) until
/// the step at 300 s, when each gets 120 users: 20 over capacity each, 40
/// unserved a second, above 90 % of capacity, more users than the 200 of
/// serving capacity. Whatever is asked for at 300 s is ready at 330 s.
fn expected(moved: f64, node_seconds: f64, scale_actions: u32) -> Figures {
    Figures {
        // 40 users over for 30 s, and each moved user away for 200 ms.
        unserved_user_seconds: 40.0 * 30.0 + 0.2 * moved,
        peak_unserved: 40.0,
        overload_seconds: 30,
        node_hours: node_seconds / 3600.0,
        scale_actions,
        flaps: 0,
        users_moved: moved,
        users_dropped: 0.0,
        surge_to_capacity_s: 30,
    }
}

/// Equal figures, floats to within 1e-6.
fn assert_close(actual: Figures, expected: Figures) {
    let floats = |f: &Figures| [f.unserved_user_seconds, f.peak_unserved, f.node_hours, f.users_moved, f.users_dropped];
    let counts = |f: &Figures| (f.overload_seconds, f.scale_actions, f.flaps, f.surge_to_capacity_s);
    let close = floats(&actual).iter().zip(floats(&expected)).all(|(a, b)| (a - b).abs() < 1e-6);
    assert!(close && counts(&actual) == counts(&expected), "\nactual   {actual:?}\nexpected {expected:?}");
}

#[test]
fn the_plain_hpa_rules_grow_by_their_arithmetic() {
    // Polled at 300 s: 200 connections served, all CPU used. Connections:
    // 200 / (70 x 2) = 1.43 -> ceil(200 / 70) = 3. CPU: 100 % / 70 % x 2
    // ready pods -> ceil(2.86) = 3. At 315 s the unready third pod (CPU
    // counted as 0) keeps 3. Ready at 330 s, it takes 4 partitions (80 users
    // move); the three hold 80 each, no one is over. Polled at 360 s: 240 /
    // 210 = 1.14 (81 % CPU / 70 % = 1.16), outside the 10 % tolerance: 4
    // pods; at 390 s the fourth takes a partition from each (60 users move).
    // The 300 s scale-down window keeps 4 to the end. Pods count from the
    // second after they are asked for: 2 x 600 + 299 + 239 s.
    for policy in ["hpa-connections", "hpa-cpu"] {
        assert_close(figures(policy), expected(80.0 + 60.0, 2.0 * 600.0 + 299.0 + 239.0, 2));
    }
}

#[test]
fn threshold_steps_step_by_urgency() {
    // At 300 s both nodes are full (critical): +3. At 330 s 5 nodes hold
    // 3, 3, 2, 2, 2 partitions (6 x 20 users moved): 60 % at most, under
    // every threshold, and not calm (50 %) either: nothing more.
    assert_close(figures("threshold-steps"), expected(120.0, 2.0 * 600.0 + 3.0 * 299.0, 1));
}

#[test]
fn rtc_steps_by_urgency_and_waits_for_its_nodes() {
    // At 300 s connections are critical (mean 1.0): a step of 4, pushed and
    // taken by the HPA at its 300 s sync (up to 10 pods per 15 s). At 330 s
    // 6 nodes hold 2 partitions each (8 x 20 users moved), 40 %. No
    // scale-in: the cooldown after a scale-out outlasts the trace.
    assert_close(figures("rtc"), expected(160.0, 2.0 * 600.0 + 4.0 * 299.0, 1));
}

/// 240 users for 300 s, then 20 for 900 s: 4 nodes at first (240 at 70 %).
fn step_down() -> Trace {
    let samples = (0..1200).map(|t| Sample { users: if t < 300 { 240.0 } else { 20.0 }, msgs_per_s: 0.0 }).collect();
    Trace { name: "step-down".into(), samples }
}

fn down(policy: &str) -> Figures {
    let config = ScaleConfig { min_replicas: 2, max_replicas: 50, ..ScaleConfig::default() };
    simulate(&step_down(), policy, &config, &small_cluster(), &[1.0 / 12.0; 12]).figures
}

/// Figures of a trace without overload: only moves and drops are unserved.
fn quiet(moved: f64, dropped: f64, node_seconds: f64, scale_actions: u32, peak: f64) -> Figures {
    Figures {
        unserved_user_seconds: 0.2 * moved + 5.0 * dropped,
        peak_unserved: peak,
        overload_seconds: 0,
        node_hours: node_seconds / 3600.0,
        scale_actions,
        flaps: 0,
        users_moved: moved,
        users_dropped: dropped,
        surge_to_capacity_s: 0,
    }
}

#[test]
fn the_plain_hpa_rules_wait_out_their_window_and_drop_users() {
    // 4 nodes of 3 partitions (5 users each after the drop). The sync at
    // 285 s used the 270 s poll (240 users: 4); from 300 s every proposal
    // is 2 (the minimum). At 585 s the 300 s window holds only those: 4 -> 2
    // in one go (100 % per 15 s). The ReplicaSet deletes two ready pods with
    // their 10 users, who are away 5 s (10 at once: the peak).
    for policy in ["hpa-connections", "hpa-cpu"] {
        assert_close(down(policy), quiet(0.0, 10.0, 4.0 * 586.0 + 2.0 * 614.0, 1, 10.0));
    }
}

#[test]
fn threshold_steps_remove_a_node_each_calm_five_minutes_undrained() {
    // Calm from the 300 s check: -1 at 600 s (3 partitions, 5 users
    // dropped), -1 at 900 s (4 partitions by then, 6.67 users dropped).
    let dropped = 5.0 + 20.0 / 3.0;
    assert_close(down("threshold-steps"), quiet(0.0, dropped, 4.0 * 601.0 + 3.0 * 300.0 + 2.0 * 299.0, 2, 20.0 / 3.0));
}

#[test]
fn rtc_drains_before_every_removal() {
    // At 0 s: 4 nodes at 60 % of capacity and 62 % CPU, under the targets.
    // Calm from 300 s, with room for 2 fewer (memory would reach 0.68 of a
    // node on one): after its 5-minute window the engine drains the two
    // emptiest (socket-3 and socket-2, 3 partitions each: 10 users move) at
    // 600 s, lowers the count at 602 s, and the HPA deletes both at its
    // 615 s sync. No user is dropped.
    let node_seconds = 2.0 * 1200.0 + 2.0 * 616.0;
    assert_close(down("rtc"), quiet(10.0, 0.0, node_seconds, 1, 2.0));
}
