//! Exact replicas end to end: the leader's decision goes through Redis, the
//! scaler's gRPC answers (read the way KEDA reads them) and the HPA model;
//! the HPA must land on exactly the desired count whenever the step is one
//! the load balancer's tolerance-aware rules allow (outside the tolerance).

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

mod support;

use rtc_core::hpa::{
    Behavior, Hpa, HpaSpec, ScalingPolicy, ScalingRules, SelectPolicy, external_average_value,
    largest_honoured_scale_down, smallest_honoured_scale_up,
};
use support::*;

const TOLERANCE: f64 = 0.1;
const MAX: u32 = 60;

/// The value KEDA hands the HPA: the float when positive, else the integer
/// (KEDA's `external_scaler.go`), for both the target and the metric.
fn keda_value(float: f64, int: i64) -> f64 {
    if float > 0.0 { float } else { int as f64 }
}

/// A behavior that never limits a single reconcile: no stabilization, and
/// policies far larger than any step here.
fn unlimited() -> Behavior {
    let rules = ScalingRules {
        stabilization_window_seconds: 0,
        select_policy: SelectPolicy::Max,
        policies: vec![ScalingPolicy::pods(1_000, 15)],
        tolerance: TOLERANCE,
    };
    Behavior { scale_up: rules.clone(), scale_down: rules }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hpa_lands_on_exactly_the_desired_replicas() {
    let prefix = prefix();
    let scaler = scaler(&prefix, &[]).await;
    let mut c = client(scaler.addr).await;

    let spec = c.get_metric_spec(reference(None)).await.unwrap().into_inner().metric_specs;
    assert_eq!(spec.len(), 1);
    let target = keda_value(spec[0].target_size_float, spec[0].target_size);
    assert_eq!(target, 1.0);

    let (mut honoured, mut swallowed) = (0, 0);
    for desired in 0..=MAX {
        let d = decide(&prefix, desired).await;
        cached(&scaler, &d).await;
        let values = c.get_metrics(metrics_request(&spec[0].metric_name)).await.unwrap().into_inner().metric_values;
        assert_eq!(values.len(), 1);
        assert_eq!(values[0].metric_name, spec[0].metric_name);
        let value = keda_value(values[0].metric_value_float, values[0].metric_value);

        for current in 1..=MAX {
            let proposal = external_average_value(current, value, target, TOLERANCE, TOLERANCE);
            let up = smallest_honoured_scale_up(current, TOLERANCE).unwrap();
            let down = largest_honoured_scale_down(current, TOLERANCE);
            // The load balancer only asks for `current` or a step outside the
            // tolerance band; a step inside it is enlarged or held.
            let allowed = desired == current || desired >= up || down.is_some_and(|down| desired <= down);
            if allowed {
                honoured += 1;
                assert_eq!(proposal, desired, "{current} -> {desired}: the HPA proposes {proposal}");
                if desired >= 1 {
                    let mut hpa = Hpa::new(HpaSpec { min_replicas: 1, max_replicas: MAX, behavior: unlimited() });
                    let replicas = hpa.reconcile(1_000, current, value, target);
                    assert_eq!(replicas, desired, "{current} -> {desired}: the HPA sets {replicas}");
                }
            } else {
                // Inside the band the HPA keeps the count: the reason the
                // load balancer never sends such a step as it is.
                swallowed += 1;
                assert_eq!(proposal, current, "{current} -> {desired}");
            }
        }
    }
    assert!(honoured > 3_000 && swallowed > 100, "{honoured} honoured, {swallowed} swallowed");
    scaler.shutdown().await;
}
