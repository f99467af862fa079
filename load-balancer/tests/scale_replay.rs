//! Replay tests of the scaling engine: synthetic load curves through the
//! closed-loop simulation (nodes start, drain and stop as decided), asserting
//! the decision timelines.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

use rtc_core::{Action, NodeState, Urgency};
use rtc_load_balancer::actuate::WorkloadKind;
use rtc_load_balancer::scale::ScaleConfig;
use rtc_load_balancer::scale::sim::{Report, Simulation, Step, changes, heartbeat, replay};

const MIN: u64 = 60_000;

fn simulation(kind: WorkloadKind, initial_nodes: u32, load: impl Fn(u64) -> f64 + 'static) -> Simulation {
    Simulation {
        config: ScaleConfig::default(),
        kind,
        capacity: 1000,
        startup_ms: 30_000,
        heartbeat_ms: 1000,
        initial_nodes,
        load: Box::new(load),
    }
}

fn print(report: &Report) {
    for step in changes(&report.timeline) {
        println!("{}", step.line());
    }
}

/// Desired never goes down then up again (or up then down) within `span`.
fn assert_no_flapping(timeline: &[Step], span_ms: u64) {
    let moves = changes(timeline);
    for pair in moves.windows(2) {
        if pair[0].decision.action != pair[1].decision.action {
            assert!(
                pair[1].at_ms - pair[0].at_ms >= span_ms,
                "direction changed within {span_ms} ms:\n{}\n{}",
                pair[0].line(),
                pair[1].line()
            );
        }
    }
}

#[test]
fn spike_scales_out_at_once_and_exponentially_without_overshoot() {
    let sim = simulation(WorkloadKind::Deployment, 4, |t| if t < MIN { 1200.0 } else { 6000.0 });
    let report = sim.run(20 * MIN);
    print(&report);
    let outs = changes(&report.timeline);
    let first = outs[0];
    assert_eq!(
        (first.at_ms, first.decision.action, first.decision.urgency),
        (MIN, Action::ScaleOut, Urgency::Critical)
    );
    assert_eq!(first.decision.step, 4, "critical starts at 4");
    assert!(outs.iter().all(|s| s.decision.action == Action::ScaleOut), "nothing scales in under steady load");
    let last = report.timeline.last().unwrap();
    assert!((8..=11).contains(&last.decision.desired_replicas), "{}", last.line());
    // Serving comfortably within two start-up times of the spike.
    let settled = report.timeline.iter().find(|s| s.at_ms >= MIN + 2 * 30_000 + 2_000).unwrap();
    assert!(settled.max_connections_fraction < 0.8, "{}", settled.line());
    // While the first nodes start the engine waits instead of piling on.
    let waits = report.timeline.iter().filter(|s| s.code == "waiting_for_nodes").count();
    assert!(waits >= 10, "{waits}");
}

#[test]
fn slow_ramp_adds_nodes_ahead_of_the_load_in_small_steps() {
    let ramp = |t: u64| 1000.0 + 9000.0 * (t.min(60 * MIN) as f64 / (60 * MIN) as f64);
    let report = simulation(WorkloadKind::Deployment, 3, ramp).run(70 * MIN);
    print(&report);
    let outs = changes(&report.timeline);
    assert!(outs.iter().all(|s| s.decision.action == Action::ScaleOut));
    assert!(outs.iter().all(|s| s.decision.urgency <= Urgency::Moderate), "a ramp is never urgent");
    assert!(outs.iter().any(|s| s.code == "trend"), "acts on the predicted load");
    let hottest = report.timeline.iter().map(|s| s.max_connections_fraction).fold(0.0, f64::max);
    assert!(hottest < 0.8, "no node ever hot: {hottest}");
    assert_eq!(report.unserved_user_seconds, 0.0);
    let last = report.timeline.last().unwrap();
    assert!((15..=17).contains(&last.decision.desired_replicas), "{}", last.line());
}

#[test]
fn sawtooth_shorter_than_the_window_never_scales_in() {
    let saw = |t: u64| if (t / (2 * MIN)).is_multiple_of(2) { 1500.0 } else { 3000.0 };
    let report = simulation(WorkloadKind::Deployment, 4, saw).run(60 * MIN);
    print(&report);
    let outs = changes(&report.timeline);
    assert!(outs.iter().all(|s| s.decision.action == Action::ScaleOut), "no scale-in");
    assert!(outs.len() <= 2, "{}", outs.len());
    assert!(report.timeline.iter().filter(|s| s.code == "scale_in_window").count() > 0, "it was calm at times");
    assert_no_flapping(&report.timeline, 30 * MIN);
}

#[test]
fn drop_to_idle_drains_the_room_the_window_showed_down_to_the_minimum() {
    let drop = |t: u64| if t < 2 * MIN { 5000.0 } else { 200.0 };
    let report = simulation(WorkloadKind::Deployment, 8, drop).run(45 * MIN);
    print(&report);
    let ins = changes(&report.timeline);
    // Room for all but one all through the window: the largest step (5),
    // then, after a fresh window, the rest down to the minimum.
    let steps: Vec<(u32, u32)> =
        ins.iter().map(|s| (s.decision.current_replicas, s.decision.desired_replicas)).collect();
    assert_eq!(steps, [(8, 3), (3, 2)]);
    assert!(ins.iter().all(|s| s.decision.action == Action::ScaleIn));
    assert!(ins[0].at_ms >= 2 * MIN + 5 * MIN, "only after the whole window: {}", ins[0].line());
    for pair in ins.windows(2) {
        assert!(pair[1].at_ms - pair[0].at_ms >= 5 * MIN, "a fresh window between removals");
    }
    // Drain first: each removal was excluded (draining) before desired fell,
    // marked for deletion, and had nobody left when the pod went.
    for step in &ins {
        assert_eq!(step.mark.len() as u32, step.decision.step);
        let before = report.timeline.iter().rev().find(|s| s.at_ms < step.at_ms).unwrap();
        assert_eq!(before.code, "draining");
        let mut marked = step.mark.clone();
        marked.sort();
        assert_eq!(before.excluded, marked, "the drained nodes are the ones removed");
    }
    assert_eq!(report.removals.len(), 6);
    assert!(report.removals.iter().all(|r| r.connections == 0), "{:?}", report.removals);
    assert_eq!(report.timeline.last().unwrap().decision.desired_replicas, 2);
    assert_no_flapping(&report.timeline, 30 * MIN);
}

#[test]
fn a_fleet_the_hpa_would_not_shrink_by_one_is_held_and_says_so() {
    let idle = |_| 200.0;
    let mut sim = simulation(WorkloadKind::Deployment, 12, idle);
    sim.config.scale_in_max_step = 1;
    let report = sim.run(10 * MIN);
    assert!(changes(&report.timeline).is_empty());
    let last = report.timeline.last().unwrap();
    assert_eq!(last.code, "hpa_tolerance");
    assert!(last.decision.reason.contains("tolerance"), "{}", last.decision.reason);

    let mut sim = simulation(WorkloadKind::Deployment, 12, idle);
    sim.config.scale_in_max_step = 2;
    let report = sim.run(13 * MIN);
    print(&report);
    let ins = changes(&report.timeline);
    // Steps of two the HPA acts on, one after the other as the removed
    // nodes stop (the window showed room for all but one all along), down
    // to the minimum.
    let steps: Vec<(u32, u32)> =
        ins.iter().map(|s| (s.decision.current_replicas, s.decision.desired_replicas)).collect();
    assert_eq!(steps[..2], [(12, 10), (10, 8)]);
    assert!(
        steps.iter().all(|(from, to)| from - to <= 2 && rtc_load_balancer::scale::engine::hpa_honours(*from, *to, 0.1))
    );
    assert_eq!(steps.last().map(|s| s.1), Some(2));
    assert!(ins[0].at_ms >= 5 * MIN, "the window first");
    assert!(report.removals.iter().all(|r| r.connections == 0));
    assert_eq!(report.removals.len(), 10);
}

#[test]
fn statefulset_sheds_its_highest_ordinals() {
    let report = simulation(WorkloadKind::StatefulSet, 5, |_| 300.0).run(20 * MIN);
    print(&report);
    let removed: Vec<&str> = report.removals.iter().map(|r| r.pod.as_str()).collect();
    assert_eq!(removed, ["socket-4", "socket-3", "socket-2"]);
    assert!(report.removals.iter().all(|r| r.connections == 0));
    assert!(changes(&report.timeline).iter().all(|s| s.mark.is_empty()), "nothing to mark for a StatefulSet");
}

#[test]
fn open_loop_replay_of_a_recorded_series_is_deterministic() {
    // Three nodes whose users double at 60 s.
    let series: Vec<_> = (0..120u64)
        .flat_map(|s| {
            ["a", "b", "c"].into_iter().map(move |id| {
                let mut hb = heartbeat(id, s + 1, s * 1000, NodeState::Ready);
                hb.connections = if s < 60 { 450 } else { 900 };
                (s * 1000, hb)
            })
        })
        .collect();
    let run = || replay(ScaleConfig::default(), WorkloadKind::Deployment, series.clone(), 1000, 120_000);
    let timeline = run();
    assert_eq!(timeline, run());
    let outs = changes(&timeline);
    assert_eq!(outs[0].at_ms, 60_000);
    assert_eq!((outs[0].decision.current_replicas, outs[0].decision.desired_replicas), (3, 5));
    assert_eq!(outs[0].decision.urgency, Urgency::High);
}
