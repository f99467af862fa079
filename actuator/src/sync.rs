//! One KEDA + HPA sync, as pure arithmetic with injected time: from the
//! scaler's answers, the pods' heartbeat samples and the workload's replica
//! count to the count the workload should have.
//!
//! What runs where in a cluster, and here:
//! - KEDA's scale loop handles the edges the HPA never touches: a workload
//!   at zero is activated to max(`minReplicaCount`, 1) when the scaler says
//!   active, or raised to `minReplicaCount` when it does not; with
//!   `minReplicaCount` 0 it goes to zero after `cooldownPeriod` inactive.
//! - KEDA's metrics adapter answers the HPA's metric reads; while the scaler
//!   fails it returns the error, and after more than `failureThreshold`
//!   consecutive failures the `fallback` value (replicas × target), so the
//!   HPA lands on `fallback.replicas`.
//! - The HPA computes one proposal per metric (the external metric, and the
//!   `cpu`/`memory` backup triggers from the pods' utilisation), takes the
//!   highest, and applies stabilization, rate policies and min/max
//!   ([`rtc_core::hpa::Hpa`]). As the controller does, a failed metric
//!   blocks a scale-down the others propose, and all metrics failing holds
//!   the count.
//!
//! The tolerance is applied per metric, where the controller applies it; the
//! [`Hpa`] model is then fed the winning proposal with a tolerance of 0, so
//! it is not applied a second time.

use rtc_core::hpa::{Hpa, HpaSpec, Limit, Outcome, Reason, external_average_value, keda_activation_replicas};
use serde::Serialize;

/// What the scaler answered in one sync.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalerAnswer {
    /// `GetMetricSpec` + `GetMetrics`, or why they failed.
    pub metric: Result<MetricReading, String>,
    /// `IsActive`, or why it failed.
    pub active: Result<bool, String>,
}

/// The external metric as the HPA sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricReading {
    pub name: String,
    pub value: f64,
    /// The `AverageValue` target from `GetMetricSpec`.
    pub target: f64,
}

/// One running pod as the resource metrics see it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodSample {
    pub id: String,
    /// Its latest heartbeat says `ready` (the pod's Ready condition).
    pub ready: bool,
    /// CPU and memory from a fresh heartbeat (fraction of the limit); `None`
    /// when the pod has no fresh heartbeat (metrics missing).
    pub cpu: Option<f64>,
    pub memory: Option<f64>,
}

/// KEDA `fallback`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fallback {
    pub replicas: u32,
    pub failure_threshold: u32,
}

/// The ScaledObject settings the sync needs besides the HPA spec.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncConfig {
    /// KEDA `minReplicaCount` (may be 0; the HPA gets at least 1).
    pub min_replicas: u32,
    pub fallback: Option<Fallback>,
    pub backup_cpu_target: Option<f64>,
    pub backup_memory_target: Option<f64>,
    /// KEDA `cooldownPeriod`, in milliseconds.
    pub cooldown_ms: u64,
}

/// Which controller set the count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Path {
    /// The HPA reconciled.
    Hpa,
    /// KEDA: active at zero replicas, scaled to max(`minReplicaCount`, 1).
    KedaActivation,
    /// KEDA: at zero and not active (or unknown), raised to `minReplicaCount`.
    KedaMinReplicas,
    /// KEDA: at zero while the scaler fails past the threshold: `fallback.replicas`.
    KedaFallback,
    /// KEDA: inactive for `cooldownPeriod` with `minReplicaCount` 0.
    KedaScaleToZero,
    /// At zero with nothing asking for more.
    Idle,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExternalTrace {
    pub metric: Option<String>,
    /// The value the HPA read (the fallback value while it applies).
    pub value: Option<f64>,
    pub target: Option<f64>,
    /// The replicas this metric proposes, after the tolerance.
    pub proposal: Option<u32>,
    pub fallback: bool,
    /// Consecutive failed metric reads (KEDA's `numberOfFailures`).
    pub failures: u32,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResourceTrace {
    pub target: f64,
    /// Mean utilisation of the pods with metrics that count.
    pub mean: Option<f64>,
    pub proposal: Option<u32>,
    pub ready: u32,
    pub unready: u32,
    pub missing: u32,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HpaTrace {
    pub reason: &'static str,
    pub proposed: Option<u32>,
    pub stabilized: Option<u32>,
    pub limited_by: Option<&'static str>,
}

/// The result of one sync, with every number that led to it (logged and
/// written to the events file).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyncOutcome {
    /// The workload's replicas before the sync (`spec.replicas`).
    pub current: u32,
    /// The workload's replicas after it.
    pub desired: u32,
    /// Running pods (`status.replicas`).
    pub pods: u32,
    pub path: Path,
    pub active: Option<bool>,
    pub external: ExternalTrace,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<ResourceTrace>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<ResourceTrace>,
    /// The highest metric proposal the HPA acted on (`None`: held).
    pub proposal: Option<u32>,
    pub hpa: Option<HpaTrace>,
    /// One line for people.
    pub reason: String,
}

/// KEDA and the HPA for one workload, with the memory they keep between syncs.
#[derive(Debug, Clone)]
pub struct Syncer {
    config: SyncConfig,
    hpa: Hpa,
    scale_up_tolerance: f64,
    scale_down_tolerance: f64,
    failures: u32,
    last_active_ms: Option<u64>,
    /// The last target read, for the fallback value while the spec cannot be read.
    last_target: Option<f64>,
}

impl Syncer {
    /// # Panics
    /// If `spec` fails validation (check it with [`HpaSpec::validate`] first).
    pub fn new(config: SyncConfig, mut spec: HpaSpec) -> Self {
        let scale_up_tolerance = spec.behavior.scale_up.tolerance;
        let scale_down_tolerance = spec.behavior.scale_down.tolerance;
        // Applied per metric in `step`; see the module docs.
        spec.behavior.scale_up.tolerance = 0.0;
        spec.behavior.scale_down.tolerance = 0.0;
        Self {
            config,
            hpa: Hpa::new(spec),
            scale_up_tolerance,
            scale_down_tolerance,
            failures: 0,
            last_active_ms: None,
            last_target: None,
        }
    }

    /// One sync at `now_ms` (any monotonic clock): `current` is the
    /// workload's `spec.replicas`, `pods` its running pods.
    pub fn step(&mut self, now_ms: u64, current: u32, scaler: &ScalerAnswer, pods: &[PodSample]) -> SyncOutcome {
        let external = self.external(pods.len() as u32, scaler);
        let active = scaler.active.as_ref().ok().copied();
        if active == Some(true) {
            self.last_active_ms = Some(now_ms);
        }
        let mut outcome = SyncOutcome {
            current,
            desired: current,
            pods: pods.len() as u32,
            path: Path::Hpa,
            active,
            external,
            cpu: None,
            memory: None,
            proposal: None,
            hpa: None,
            reason: String::new(),
        };
        if let Some(path) = self.keda_scale_loop(now_ms, current, active, &outcome.external) {
            outcome.path = path;
            outcome.desired = match path {
                Path::KedaActivation => keda_activation_replicas(self.config.min_replicas),
                Path::KedaMinReplicas => self.config.min_replicas,
                Path::KedaFallback => self.config.fallback.map_or(current, |f| f.replicas),
                Path::KedaScaleToZero | Path::Idle => 0,
                Path::Hpa => current,
            }
            .min(self.hpa.spec().max_replicas);
            outcome.reason = reason(&outcome);
            return outcome;
        }

        let tolerances = (self.scale_up_tolerance, self.scale_down_tolerance);
        outcome.cpu = self.config.backup_cpu_target.map(|target| {
            let samples: Vec<_> = pods.iter().map(|p| (p.ready, p.cpu)).collect();
            resource_proposal(current, &samples, target, true, tolerances)
        });
        outcome.memory = self.config.backup_memory_target.map(|target| {
            let samples: Vec<_> = pods.iter().map(|p| (p.ready, p.memory)).collect();
            resource_proposal(current, &samples, target, false, tolerances)
        });
        let proposals = [Some(outcome.external.proposal), outcome.cpu.as_ref().map(|c| c.proposal)]
            .into_iter()
            .chain([outcome.memory.as_ref().map(|m| m.proposal)])
            .flatten();
        let (mut invalid, mut highest) = (0, None::<u32>);
        for proposal in proposals {
            match proposal {
                Some(p) => highest = Some(highest.map_or(p, |h| h.max(p))),
                None => invalid += 1,
            }
        }
        // `computeReplicasForMetrics`: with any metric invalid, only a
        // scale-up (or hold) on the others goes ahead.
        outcome.proposal = highest.filter(|h| invalid == 0 || *h >= current);
        let hpa = self.hpa.reconcile_outcome(now_ms, current, outcome.proposal.map(f64::from), 1.0);
        outcome.desired = hpa.replicas;
        outcome.hpa = Some(trace(&hpa));
        outcome.reason = reason(&outcome);
        outcome
    }

    /// The external metric as KEDA hands it to the HPA, with the fallback.
    fn external(&mut self, status_replicas: u32, scaler: &ScalerAnswer) -> ExternalTrace {
        let (up, down) = (self.scale_up_tolerance, self.scale_down_tolerance);
        match &scaler.metric {
            Ok(m) => {
                self.failures = 0;
                self.last_target = Some(m.target);
                // The controller divides by `status.replicas` (the pods that
                // exist, `GetExternalPerPodMetricReplicas`), not by `spec.replicas`.
                let proposal = external_average_value(status_replicas, m.value, m.target, up, down);
                ExternalTrace {
                    metric: Some(m.name.clone()),
                    value: Some(m.value),
                    target: Some(m.target),
                    proposal: Some(proposal),
                    fallback: false,
                    failures: 0,
                    error: None,
                }
            }
            Err(error) => {
                self.failures = self.failures.saturating_add(1);
                let mut trace = ExternalTrace {
                    metric: None,
                    value: None,
                    target: None,
                    proposal: None,
                    fallback: false,
                    failures: self.failures,
                    error: Some(error.clone()),
                };
                if let Some(f) = self.fallback_now() {
                    let target = self.last_target.unwrap_or(1.0);
                    let value = f64::from(f.replicas) * target;
                    trace.value = Some(value);
                    trace.target = Some(target);
                    trace.fallback = true;
                    trace.proposal = Some(external_average_value(status_replicas, value, target, up, down));
                }
                trace
            }
        }
    }

    /// KEDA applies the fallback once failures exceed the threshold (`>`, as
    /// in KEDA's `GetMetricsWithFallback`).
    fn fallback_now(&self) -> Option<Fallback> {
        self.config.fallback.filter(|f| self.failures > f.failure_threshold)
    }

    /// KEDA's scale loop: the cases the HPA does not handle, or `None` to let
    /// the HPA reconcile.
    fn keda_scale_loop(
        &self,
        now_ms: u64,
        current: u32,
        active: Option<bool>,
        external: &ExternalTrace,
    ) -> Option<Path> {
        let min = self.config.min_replicas;
        if current == 0 {
            return Some(if active == Some(true) {
                Path::KedaActivation
            } else if external.fallback {
                Path::KedaFallback
            } else if min > 0 {
                Path::KedaMinReplicas
            } else {
                Path::Idle
            });
        }
        let cooled_down = self.last_active_ms.is_none_or(|at| now_ms.saturating_sub(at) >= self.config.cooldown_ms);
        if min == 0 && active == Some(false) && cooled_down {
            return Some(Path::KedaScaleToZero);
        }
        None
    }
}

/// The replicas a `Resource` metric with a `Utilization` target proposes
/// (`GetResourceReplicas`), from (ready, utilisation) per running pod.
///
/// Pods without a fresh sample are *missing*: on a scale-down they count as
/// fully used (max(100 %, target)), on a scale-up as idle. With
/// `ignore_unready` (CPU) a pod that is not ready is left out, and counts as
/// idle on a scale-up. If those assumptions flip the direction or land inside
/// the tolerance, the count stays.
pub fn resource_proposal(
    current: u32,
    samples: &[(bool, Option<f64>)],
    target: f64,
    ignore_unready: bool,
    (scale_up_tolerance, scale_down_tolerance): (f64, f64),
) -> ResourceTrace {
    let within = |ratio: f64| (1.0 - scale_down_tolerance) <= ratio && ratio <= (1.0 + scale_up_tolerance);
    let mut ready = Vec::new();
    let (mut unready, mut missing) = (0u32, 0u32);
    for (is_ready, usage) in samples {
        match usage {
            None => missing += 1,
            Some(_) if ignore_unready && !is_ready => unready += 1,
            Some(u) => ready.push(*u),
        }
    }
    let mut trace =
        ResourceTrace { target, mean: None, proposal: None, ready: ready.len() as u32, unready, missing, error: None };
    if ready.is_empty() {
        trace.error = Some("no metrics for any ready pod".into());
        return trace;
    }
    let mean = |values: &[f64]| values.iter().sum::<f64>() / values.len() as f64;
    let ratio = mean(&ready) / target;
    trace.mean = Some(mean(&ready));
    let scale_up_with_unready = unready > 0 && ratio > 1.0;
    if !scale_up_with_unready && missing == 0 {
        trace.proposal = Some(if within(ratio) { current } else { ceil_replicas(ratio * ready.len() as f64) });
        return trace;
    }
    let mut assumed = ready.clone();
    if ratio < 1.0 {
        assumed.extend(std::iter::repeat_n(target.max(1.0), missing as usize));
    } else if ratio > 1.0 {
        assumed.extend(std::iter::repeat_n(0.0, missing as usize));
    }
    if scale_up_with_unready {
        assumed.extend(std::iter::repeat_n(0.0, unready as usize));
    }
    let new_ratio = mean(&assumed) / target;
    if within(new_ratio) || (ratio < 1.0 && new_ratio > 1.0) || (ratio > 1.0 && new_ratio < 1.0) {
        trace.proposal = Some(current);
        return trace;
    }
    let replicas = ceil_replicas(new_ratio * assumed.len() as f64);
    let flipped = (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current);
    trace.proposal = Some(if flipped { current } else { replicas });
    trace
}

fn ceil_replicas(x: f64) -> u32 {
    if x.is_finite() && x > 0.0 { x.ceil().min(f64::from(rtc_core::hpa::MAX_REPLICAS)) as u32 } else { 0 }
}

fn trace(o: &Outcome) -> HpaTrace {
    HpaTrace {
        reason: match o.reason {
            Reason::ScalingDisabled => "scaling_disabled",
            Reason::AboveMaxReplicas => "above_max_replicas",
            Reason::BelowMinReplicas => "below_min_replicas",
            Reason::MetricUnavailable => "metric_unavailable",
            Reason::InvalidTarget => "invalid_target",
            Reason::Metric => "metric",
        },
        proposed: o.proposed,
        stabilized: o.stabilized,
        limited_by: o.limited_by.map(|l| match l {
            Limit::ScaleUpLimit => "scale_up_limit",
            Limit::TooManyReplicas => "too_many_replicas",
            Limit::ScaleDownLimit => "scale_down_limit",
            Limit::TooFewReplicas => "too_few_replicas",
        }),
    }
}

/// One line saying why the count is what it is.
fn reason(o: &SyncOutcome) -> String {
    let e = &o.external;
    let metric = match (&e.error, e.value) {
        (None, Some(v)) => format!(
            "metric {}={v} (target {}) proposes {}",
            e.metric.as_deref().unwrap_or("?"),
            e.target.unwrap_or(0.0),
            e.proposal.map_or("-".into(), |p| p.to_string())
        ),
        (Some(err), Some(v)) => format!(
            "scaler failing ({} consecutive: {err}): fallback value {v} proposes {}",
            e.failures,
            e.proposal.map_or("-".into(), |p| p.to_string())
        ),
        (Some(err), None) => format!("scaler failing ({} consecutive: {err})", e.failures),
        (None, None) => "no metric".into(),
    };
    let resource = |name: &str, r: &Option<ResourceTrace>| match r {
        None => String::new(),
        Some(r) => match (&r.error, r.mean, r.proposal) {
            (Some(err), _, _) => format!("; {name}: {err}"),
            (None, Some(mean), Some(p)) => format!("; {name} mean {mean:.3}/{:.3} proposes {p}", r.target),
            _ => String::new(),
        },
    };
    let (from, to) = (o.current, o.desired);
    match o.path {
        Path::KedaActivation => format!("keda: scaler active at 0 replicas: activate {from} -> {to}"),
        Path::KedaMinReplicas => format!("keda: below minReplicaCount: {from} -> {to} ({metric})"),
        Path::KedaFallback => format!("keda: fallback at 0 replicas: {from} -> {to} ({metric})"),
        Path::KedaScaleToZero => format!("keda: inactive for the cooldown period: {from} -> {to}"),
        Path::Idle => "keda: at 0 replicas and not active".into(),
        Path::Hpa => {
            let h = o.hpa.as_ref();
            let tail = match (o.proposal, h) {
                (_, Some(h)) if h.reason != "metric" => format!("hpa {}", h.reason),
                (None, _) => "hpa holds: a metric is unavailable".into(),
                (Some(p), Some(h)) => {
                    let mut t = format!("proposal {p}, stabilized {}", h.stabilized.unwrap_or(p));
                    if let Some(limit) = h.limited_by {
                        t.push_str(&format!(", limited by {limit}"));
                    }
                    t
                }
                (Some(p), None) => format!("proposal {p}"),
            };
            format!("{metric}{}{}; {tail}: {from} -> {to}", resource("cpu", &o.cpu), resource("memory", &o.memory))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc_core::hpa::{
        Behavior, ScalingPolicy, ScalingRules, SelectPolicy, largest_honoured_scale_down, smallest_honoured_scale_up,
    };

    const SECOND: u64 = 1_000;

    fn rules(window: u32, tolerance: f64) -> ScalingRules {
        ScalingRules {
            stabilization_window_seconds: window,
            select_policy: SelectPolicy::Max,
            policies: vec![ScalingPolicy::pods(1_000, 15)],
            tolerance,
        }
    }

    /// The demo's HPA: no stabilization, unlimited rates, tolerance 0.1.
    fn unlimited(min: u32, max: u32) -> HpaSpec {
        HpaSpec {
            min_replicas: min,
            max_replicas: max,
            behavior: Behavior { scale_up: rules(0, 0.1), scale_down: rules(0, 0.1) },
        }
    }

    fn config() -> SyncConfig {
        SyncConfig {
            min_replicas: 1,
            fallback: None,
            backup_cpu_target: None,
            backup_memory_target: None,
            cooldown_ms: 0,
        }
    }

    fn answer(desired: u32) -> ScalerAnswer {
        ScalerAnswer {
            metric: Ok(MetricReading {
                name: "socket-desired-replicas".into(),
                value: f64::from(desired),
                target: 1.0,
            }),
            active: Ok(desired > 0),
        }
    }

    fn failing() -> ScalerAnswer {
        ScalerAnswer { metric: Err("status: Unavailable".into()), active: Err("status: Unavailable".into()) }
    }

    fn pods(n: u32) -> Vec<PodSample> {
        (0..n).map(|i| PodSample { id: format!("socket-{i}"), ready: true, cpu: None, memory: None }).collect()
    }

    fn busy(cpus: &[f64]) -> Vec<PodSample> {
        cpus.iter()
            .enumerate()
            .map(|(i, c)| PodSample { id: format!("socket-{i}"), ready: true, cpu: Some(*c), memory: Some(0.1) })
            .collect()
    }

    #[test]
    fn a_metric_value_lands_on_exactly_that_count_when_outside_the_tolerance() {
        let (mut honoured, mut held) = (0, 0);
        for current in 1..=40u32 {
            let up = smallest_honoured_scale_up(current, 0.1).unwrap();
            let down = largest_honoured_scale_down(current, 0.1).unwrap();
            for desired in 1..=40u32 {
                let mut s = Syncer::new(config(), unlimited(1, 40));
                let o = s.step(SECOND, current, &answer(desired), &pods(current));
                assert_eq!(o.path, Path::Hpa);
                if desired == current || desired >= up || desired <= down {
                    honoured += 1;
                    assert_eq!(o.desired, desired, "{current} -> {desired}: {}", o.reason);
                } else {
                    // Inside the band the HPA keeps the count: the load
                    // balancer enlarges or holds such steps.
                    held += 1;
                    assert_eq!(o.desired, current, "{current} -> {desired}: {}", o.reason);
                }
            }
        }
        assert!(honoured > 1_000 && held > 50, "{honoured} honoured, {held} held");
    }

    #[test]
    fn default_behavior_rate_limits_the_scale_up_and_stabilizes_the_scale_down() {
        let mut s = Syncer::new(config(), HpaSpec::new(1, 50));
        // 2 -> 20: "+4 pods or +100 % per 15 s", the larger: 6, 12, then 20.
        let mut current = 2;
        let mut seen = vec![];
        for i in 0..4 {
            current = s.step(i * 15 * SECOND, current, &answer(20), &pods(current)).desired;
            seen.push(current);
        }
        assert_eq!(seen, vec![6, 12, 20, 20]);
        // A drop to 5 waits out the 300 s scale-down window.
        let t = 60 * SECOND;
        assert_eq!(s.step(t, 20, &answer(5), &pods(20)).desired, 20);
        let o = s.step(t + 300 * SECOND, 20, &answer(5), &pods(20));
        assert_eq!(o.desired, 5, "{}", o.reason);
    }

    #[test]
    fn the_workload_at_zero_is_keda_s_to_start() {
        let mut c = config();
        c.min_replicas = 2;
        let mut s = Syncer::new(c.clone(), unlimited(2, 10));
        let o = s.step(0, 0, &answer(5), &[]);
        assert_eq!((o.path, o.desired), (Path::KedaActivation, 2));
        // Then the HPA goes on from there.
        let o = s.step(SECOND, 2, &answer(5), &pods(2));
        assert_eq!((o.path, o.desired), (Path::Hpa, 5));

        // Unreachable scaler at zero: minReplicaCount.
        let mut s = Syncer::new(c.clone(), unlimited(2, 10));
        let o = s.step(0, 0, &failing(), &[]);
        assert_eq!((o.path, o.desired), (Path::KedaMinReplicas, 2));

        // minReplicaCount 0: nothing until active.
        c.min_replicas = 0;
        let mut s = Syncer::new(c, unlimited(1, 10));
        assert_eq!(s.step(0, 0, &answer(0), &[]).path, Path::Idle);
        let o = s.step(SECOND, 0, &answer(3), &[]);
        assert_eq!((o.path, o.desired), (Path::KedaActivation, 1));
    }

    #[test]
    fn scale_to_zero_waits_for_the_cooldown() {
        let mut c = config();
        c.min_replicas = 0;
        c.cooldown_ms = 60 * SECOND;
        let mut s = Syncer::new(c, unlimited(1, 10));
        assert_eq!(s.step(0, 3, &answer(3), &pods(3)).desired, 3);
        let o = s.step(30 * SECOND, 3, &answer(0), &pods(3));
        assert_eq!(o.path, Path::Hpa, "{}", o.reason);
        let o = s.step(60 * SECOND, o.desired, &answer(0), &pods(o.desired));
        assert_eq!((o.path, o.desired), (Path::KedaScaleToZero, 0));
    }

    #[test]
    fn fallback_applies_after_more_than_threshold_consecutive_failures() {
        let mut c = config();
        c.fallback = Some(Fallback { replicas: 6, failure_threshold: 3 });
        let mut s = Syncer::new(c, unlimited(1, 10));
        assert_eq!(s.step(0, 3, &answer(3), &pods(3)).desired, 3);
        for i in 1..=3 {
            let o = s.step(i * SECOND, 3, &failing(), &pods(3));
            assert_eq!((o.desired, o.external.fallback, o.external.failures), (3, false, i as u32), "{}", o.reason);
            assert_eq!(o.hpa.unwrap().reason, "metric_unavailable");
        }
        let o = s.step(4 * SECOND, 3, &failing(), &pods(3));
        assert!(o.external.fallback, "{}", o.reason);
        assert_eq!(o.desired, 6, "{}", o.reason);
        assert!(o.reason.contains("fallback"), "{}", o.reason);
        // One good answer resets the count.
        assert_eq!(s.step(5 * SECOND, 6, &answer(4), &pods(6)).desired, 4);
        assert_eq!(s.step(6 * SECOND, 4, &failing(), &pods(4)).external.failures, 1);
        assert_eq!(s.step(7 * SECOND, 4, &failing(), &pods(4)).desired, 4);
    }

    #[test]
    fn without_fallback_a_failing_scaler_holds_the_count() {
        let mut s = Syncer::new(config(), unlimited(1, 10));
        for i in 0..10 {
            let o = s.step(i * SECOND, 4, &failing(), &pods(4));
            assert_eq!((o.desired, o.proposal), (4, None));
        }
    }

    #[test]
    fn backup_cpu_rule_scales_out_when_the_scaler_is_down() {
        let mut c = config();
        c.backup_cpu_target = Some(0.7);
        let mut s = Syncer::new(c.clone(), unlimited(1, 10));
        // Mean 0.91 / 0.7 = 1.3 -> ceil(3 * 1.3) = 4.
        let o = s.step(0, 3, &failing(), &busy(&[0.9, 0.92, 0.91]));
        assert_eq!(o.desired, 4, "{}", o.reason);
        assert_eq!(o.cpu.as_ref().unwrap().proposal, Some(4));
        // Within the tolerance (0.75 / 0.7 = 1.07): hold.
        let o = s.step(SECOND, 4, &failing(), &busy(&[0.75, 0.75, 0.75, 0.75]));
        assert_eq!(o.desired, 4, "{}", o.reason);
        // The scaler down and cpu low: no scale-down on partial metrics.
        let o = s.step(2 * SECOND, 4, &failing(), &busy(&[0.1, 0.1, 0.1, 0.1]));
        assert_eq!((o.desired, o.proposal), (4, None), "{}", o.reason);

        // With the scaler up the HPA takes the higher proposal.
        let mut s = Syncer::new(c, unlimited(1, 10));
        let o = s.step(0, 3, &answer(3), &busy(&[0.9, 0.92, 0.91]));
        assert_eq!(o.desired, 4, "{}", o.reason);
        let o = s.step(SECOND, 4, &answer(6), &busy(&[0.9, 0.92, 0.91, 0.9]));
        assert_eq!(o.desired, 6, "{}", o.reason);
        let o = s.step(2 * SECOND, 6, &answer(2), &busy(&[0.1; 6]));
        assert_eq!(o.desired, 2, "both propose fewer: {}", o.reason);
    }

    #[test]
    fn resource_proposal_handles_missing_and_unready_pods_like_the_controller() {
        let t = (0.1, 0.1);
        // All ready, 0.35 / 0.7 = 0.5 -> ceil(4 * 0.5) = 2.
        let all = [(true, Some(0.35)); 4];
        assert_eq!(resource_proposal(4, &all, 0.7, true, t).proposal, Some(2));
        // Scale-down with a missing pod: it counts as fully used, (3 * 0.35 + 1) / 4 / 0.7 = 0.73 -> 3.
        let missing = [(true, Some(0.35)), (true, Some(0.35)), (true, Some(0.35)), (true, None)];
        let r = resource_proposal(4, &missing, 0.7, true, t);
        assert_eq!((r.proposal, r.missing), (Some(3), 1));
        // Scale-up with an unready pod: it counts as idle: (0.98 * 2 + 0) / 3 / 0.7 = 0.93: inside the band.
        let unready = [(true, Some(0.98)), (true, Some(0.98)), (false, Some(0.5))];
        let r = resource_proposal(3, &unready, 0.7, true, t);
        assert_eq!((r.proposal, r.unready), (Some(3), 1));
        // Memory does not ignore unready pods: 0.82 / 0.7 = 1.17 -> ceil(3 * 1.17) = 4.
        let r = resource_proposal(3, &unready.map(|(r, _)| (r, Some(0.82))), 0.7, false, t);
        assert_eq!(r.proposal, Some(4));
        // No ready pod with metrics: the metric is invalid.
        let r = resource_proposal(2, &[(false, Some(0.9)), (true, None)], 0.7, true, t);
        assert_eq!(r.proposal, None);
        assert!(r.error.is_some());
    }

    #[test]
    fn reasons_name_the_numbers() {
        let mut s = Syncer::new(config(), unlimited(1, 10));
        let o = s.step(0, 3, &answer(7), &pods(3));
        assert!(o.reason.contains("socket-desired-replicas=7"), "{}", o.reason);
        assert!(o.reason.ends_with("3 -> 7"), "{}", o.reason);
        let json = serde_json::to_value(&o).unwrap();
        assert_eq!(json["path"], "hpa");
        assert_eq!(json["hpa"]["proposed"], 7);
    }

    #[test]
    fn max_replicas_caps_every_path() {
        let mut c = config();
        c.min_replicas = 8;
        let mut s = Syncer::new(c, unlimited(5, 5));
        assert_eq!(s.step(0, 0, &answer(9), &[]).desired, 5);
        let o = s.step(SECOND, 5, &answer(9), &pods(5));
        assert_eq!((o.desired, o.hpa.unwrap().limited_by), (5, Some("too_many_replicas")));
    }
}
