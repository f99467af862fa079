//! A pure model of the Kubernetes HorizontalPodAutoscaler (`autoscaling/v2`)
//! driven by one `External` metric with an `AverageValue` target, which is how
//! KEDA wires the rtc scaler into an HPA.
//!
//! rtc reports the desired replica count N as the metric value against a
//! target average of 1, so the HPA's metric arithmetic yields exactly N. Whether
//! the HPA then *sets* N depends on the rest of the controller: the tolerance
//! around a usage ratio of 1, `minReplicas`/`maxReplicas`, the stabilization
//! windows and the rate policies of `spec.behavior`, the last two of which keep
//! memory between reconciles. The KEDA scaler's tests and the local actuator
//! (which stands in for KEDA and the HPA on one machine) need that behaviour
//! without a cluster, so it lives here as plain arithmetic with injected time.
//!
//! The model follows `pkg/controller/podautoscaler` (`horizontal.go`,
//! `replica_calculator.go`) of Kubernetes 1.33–1.35, step by step:
//!
//! 1. On the first reconcile the controller remembers the current replica count
//!    as a recommendation (`recordInitialRecommendation`), so a fresh HPA does
//!    not scale down until that sample leaves the scale-down window.
//! 2. `spec.replicas == 0` disables scaling; a count above `maxReplicas` or
//!    below `minReplicas` is clamped straight away, without reading the metric
//!    and without stabilization or rate limits.
//! 3. The metric proposal (`GetExternalPerPodMetricReplicas`): usage ratio =
//!    value / (target × replicas) in milli-units; inside the tolerance band
//!    (bounds included) the current count stands, otherwise ceil(value / target).
//! 4. Stabilization (`stabilizeRecommendationWithBehaviors`): the lowest
//!    recommendation of the scale-up window and the highest of the scale-down
//!    window bound the move away from the current count.
//! 5. Rate policies (`convertDesiredReplicasWithBehaviorRate`): what the
//!    policies allow relative to the replica count at the start of each
//!    policy's period, then `maxReplicas`/`minReplicas`.
//! 6. A rescale is remembered as a scale event for later rate limits
//!    (`storeScaleEvent`).
//!
//! Time is milliseconds on any monotonic clock the caller likes; windows and
//! periods exclude their cutoff instant exactly as the Go code's
//! `time.After(cutoff)` does.
//!
//! # Not modelled
//! - Several metrics (the HPA takes the highest proposal; KEDA's cpu/memory
//!   backup triggers), other metric types, and KEDA's `fallback`.
//! - An HPA without `spec.behavior` (the legacy path: the controller's
//!   downscale window and a scale-up cap of max(2 × current, 4) per reconcile).
//!   KEDA copies the ScaledObject's behavior, and rtc always sets one.
//! - `status.replicas` as distinct from `spec.replicas`: the controller divides
//!   the metric by `status.replicas`; the model uses `current` for both, i.e.
//!   it assumes the workload has created the pods it was asked for.
//! - The alpha `HPAScaleToZero` gate (an HPA scaling up from zero by itself):
//!   at zero replicas the HPA does nothing and KEDA activates the workload; see
//!   [`keda_activation_replicas`].
//! - The `HPAConfigurableTolerance` gate: per-direction tolerances are always
//!   honoured here; a cluster without the gate uses its one cluster-wide
//!   tolerance for both directions, so set both to that value.
//! - Status conditions and events (beyond [`Reason`] and [`Limit`]), failed
//!   scale updates, the sync period (call [`Hpa::reconcile`] at the cadence
//!   you want, 15 s by default), and a controller-manager restart, which
//!   forgets all recommendations and scale events.

use std::fmt;

use thiserror::Error;

/// The cluster-wide default of `--horizontal-pod-autoscaler-tolerance`.
pub const DEFAULT_TOLERANCE: f64 = 0.1;

/// The default of `--horizontal-pod-autoscaler-downscale-stabilization`, which
/// the controller uses when `behavior.scaleDown.stabilizationWindowSeconds` is
/// left out.
pub const DEFAULT_SCALE_DOWN_STABILIZATION_SECONDS: u32 = 300;

/// Longest `stabilizationWindowSeconds` the API server accepts.
pub const MAX_STABILIZATION_WINDOW_SECONDS: u32 = 3600;

/// Longest policy `periodSeconds` the API server accepts.
pub const MAX_PERIOD_SECONDS: u32 = 1800;

/// Replica counts are `int32` in the Kubernetes API.
pub const MAX_REPLICAS: u32 = i32::MAX as u32;

/// How a scaling policy measures the change it allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    /// At most `value` pods per period.
    Pods,
    /// At most `value` percent of the replicas present at the start of the period.
    Percent,
}

/// One entry of `behavior.scaleUp.policies` / `behavior.scaleDown.policies`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ScalingPolicy {
    pub kind: PolicyKind,
    pub value: u32,
    pub period_seconds: u32,
}

impl ScalingPolicy {
    pub const fn pods(value: u32, period_seconds: u32) -> Self {
        Self { kind: PolicyKind::Pods, value, period_seconds }
    }

    pub const fn percent(value: u32, period_seconds: u32) -> Self {
        Self { kind: PolicyKind::Percent, value, period_seconds }
    }
}

/// `selectPolicy`: which policy wins when several apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SelectPolicy {
    /// The policy allowing the largest change (the Kubernetes default).
    #[default]
    Max,
    /// The policy allowing the smallest change.
    Min,
    /// No scaling in this direction at all.
    Disabled,
}

/// `behavior.scaleUp` or `behavior.scaleDown`, with every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingRules {
    pub stabilization_window_seconds: u32,
    pub select_policy: SelectPolicy,
    pub policies: Vec<ScalingPolicy>,
    /// Usage-ratio tolerance for this direction (`behavior.*.tolerance`).
    pub tolerance: f64,
}

impl ScalingRules {
    /// What the API server fills in for an omitted `behavior.scaleUp`.
    pub fn default_scale_up() -> Self {
        Self {
            stabilization_window_seconds: 0,
            select_policy: SelectPolicy::Max,
            // Kubernetes' order; the order never changes the result.
            policies: vec![ScalingPolicy::pods(4, 15), ScalingPolicy::percent(100, 15)],
            tolerance: DEFAULT_TOLERANCE,
        }
    }

    /// What the API server and the controller fill in for an omitted `behavior.scaleDown`.
    pub fn default_scale_down() -> Self {
        Self {
            stabilization_window_seconds: DEFAULT_SCALE_DOWN_STABILIZATION_SECONDS,
            select_policy: SelectPolicy::Max,
            policies: vec![ScalingPolicy::percent(100, 15)],
            tolerance: DEFAULT_TOLERANCE,
        }
    }
}

/// `spec.behavior`.
#[derive(Debug, Clone, PartialEq)]
pub struct Behavior {
    pub scale_up: ScalingRules,
    pub scale_down: ScalingRules,
}

impl Default for Behavior {
    /// Kubernetes' defaults for a `behavior` with both directions left out.
    fn default() -> Self {
        Self { scale_up: ScalingRules::default_scale_up(), scale_down: ScalingRules::default_scale_down() }
    }
}

/// The parts of an HPA spec that decide replica counts.
#[derive(Debug, Clone, PartialEq)]
pub struct HpaSpec {
    /// KEDA never sets 0 here (it uses max(minReplicaCount, 1)); 0 is accepted
    /// because the alpha `HPAScaleToZero` gate allows it for external metrics.
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub behavior: Behavior,
}

impl HpaSpec {
    /// A spec with Kubernetes' default behavior.
    pub fn new(min_replicas: u32, max_replicas: u32) -> Self {
        Self { min_replicas, max_replicas, behavior: Behavior::default() }
    }

    /// The checks the API server applies to these fields; a spec that fails
    /// them could never reach a real controller.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.max_replicas == 0 || self.max_replicas > MAX_REPLICAS {
            return Err(SpecError::MaxReplicas(self.max_replicas));
        }
        if self.min_replicas > self.max_replicas {
            return Err(SpecError::MinAboveMax { min: self.min_replicas, max: self.max_replicas });
        }
        self.behavior.scale_up.validate(Direction::ScaleUp)?;
        self.behavior.scale_down.validate(Direction::ScaleDown)
    }
}

impl ScalingRules {
    fn validate(&self, direction: Direction) -> Result<(), SpecError> {
        if self.stabilization_window_seconds > MAX_STABILIZATION_WINDOW_SECONDS {
            return Err(SpecError::StabilizationWindow(direction, self.stabilization_window_seconds));
        }
        if self.policies.is_empty() {
            return Err(SpecError::NoPolicies(direction));
        }
        for (index, policy) in self.policies.iter().enumerate() {
            if policy.value == 0 || policy.value > MAX_REPLICAS {
                return Err(SpecError::PolicyValue { direction, index, value: policy.value });
            }
            if policy.period_seconds == 0 || policy.period_seconds > MAX_PERIOD_SECONDS {
                return Err(SpecError::PolicyPeriod { direction, index, period: policy.period_seconds });
            }
        }
        if !self.tolerance.is_finite() || self.tolerance < 0.0 {
            return Err(SpecError::Tolerance(direction, self.tolerance));
        }
        Ok(())
    }
}

/// Which half of `spec.behavior` a validation error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    ScaleUp,
    ScaleDown,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ScaleUp => "scaleUp",
            Self::ScaleDown => "scaleDown",
        })
    }
}

/// A spec the API server would reject.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SpecError {
    #[error("maxReplicas must be between 1 and 2147483647, got {0}")]
    MaxReplicas(u32),
    #[error("minReplicas ({min}) must not exceed maxReplicas ({max})")]
    MinAboveMax { min: u32, max: u32 },
    #[error("behavior.{0}.stabilizationWindowSeconds must be at most 3600, got {1}")]
    StabilizationWindow(Direction, u32),
    #[error("behavior.{0}.policies must specify at least one policy")]
    NoPolicies(Direction),
    #[error("behavior.{direction}.policies[{index}].value must be between 1 and 2147483647, got {value}")]
    PolicyValue { direction: Direction, index: usize, value: u32 },
    #[error("behavior.{direction}.policies[{index}].periodSeconds must be between 1 and 1800, got {period}")]
    PolicyPeriod { direction: Direction, index: usize, period: u32 },
    #[error("behavior.{0}.tolerance must be a finite number >= 0, got {1}")]
    Tolerance(Direction, f64),
}

/// The milli-units the HPA sees for a float KEDA reports (a metric value or
/// `targetSizeFloat`).
///
/// KEDA turns the float into a `resource.Quantity` by printing it with three
/// decimals (rounding to nearest) and treats NaN and ±∞ as 0; the HPA then
/// reads `MilliValue()`. Magnitudes beyond `i64` saturate.
pub fn keda_milli(value: f64) -> i64 {
    if !value.is_finite() {
        return 0;
    }
    // Printing the magnitude keeps "-0.000" out and rounds exactly like Go's
    // `%.3f` (both round the exact binary value to nearest, ties to even).
    let printed = format!("{:.3}", value.abs());
    let (whole, fraction) = printed.split_once('.').unwrap_or((printed.as_str(), "0"));
    let magnitude = whole
        .parse::<i64>()
        .ok()
        .and_then(|whole| whole.checked_mul(1000))
        .and_then(|milli| fraction.parse::<i64>().ok().and_then(|fraction| milli.checked_add(fraction)))
        .unwrap_or(i64::MAX);
    if value < 0.0 { -magnitude } else { magnitude }
}

/// Whether a usage ratio is close enough to 1 for the HPA to leave the count
/// alone. Both bounds are inside the band (`Tolerances.isWithin`).
fn within_tolerance(ratio: f64, scale_up_tolerance: f64, scale_down_tolerance: f64) -> bool {
    (1.0 - scale_down_tolerance) <= ratio && ratio <= (1.0 + scale_up_tolerance)
}

/// One metric evaluation: the replica count an `External` metric with an
/// `AverageValue` target proposes (`GetExternalPerPodMetricReplicas`).
///
/// Both numbers pass through [`keda_milli`] first, as they do on their way
/// from KEDA to the HPA. The usage ratio is value / (target × current); inside
/// the tolerance band (bounds included) the answer is `current`, otherwise
/// ceil(value / target), capped at `int32` max. With `current == 0` the ratio
/// is infinite (or NaN for a zero value), so the answer is the plain ceiling.
/// A negative value proposes 0. A target that is not a positive milli-quantity
/// is one the API server rejects, so the count stays `current`.
pub fn external_average_value(
    current: u32,
    metric_value: f64,
    target_average: f64,
    scale_up_tolerance: f64,
    scale_down_tolerance: f64,
) -> u32 {
    let usage = keda_milli(metric_value);
    let target = keda_milli(target_average);
    if target <= 0 {
        return current;
    }
    // Same float operations, in the same order, as the controller: the
    // tolerance bounds are compared on exactly these doubles.
    let ratio = usage as f64 / (target as f64 * f64::from(current));
    if within_tolerance(ratio, scale_up_tolerance, scale_down_tolerance) {
        return current;
    }
    let replicas = (usage as f64 / target as f64).ceil();
    if replicas >= f64::from(MAX_REPLICAS) {
        MAX_REPLICAS
    } else if replicas > 0.0 {
        replicas as u32
    } else {
        0
    }
}

/// One metric evaluation for a `Resource` metric with a `Utilization` target
/// (the HPA on CPU, `GetResourceReplicas`).
///
/// `ready_usage` holds each ready pod's usage as a fraction of its request
/// (0.5 = half its CPU request); `unready` pods (pending, or not ready inside
/// the CPU initialization period) have their samples ignored. Every pod is
/// assumed to report a metric (none is missing).
///
/// Utilization is an integer percent of the summed requests, as in
/// `GetResourceUtilizationRatio`. Without unready pods, or when the ratio is
/// under 1: inside the tolerance the answer is `current`, otherwise
/// ceil(ratio × ready pods). When scaling up with unready pods, those count
/// as using nothing, and a scale-up that this turns into a scale-down (or
/// into the tolerance band) does not happen. With no ready pod there is no
/// metric, and the count stays `current`.
pub fn resource_utilization_replicas(
    current: u32,
    ready_usage: &[f64],
    unready: u32,
    target_percent: u32,
    scale_up_tolerance: f64,
    scale_down_tolerance: f64,
) -> u32 {
    // Requests of 1000m each: usage in milli-units of the request.
    let milli: Vec<i64> = ready_usage.iter().map(|u| (u.max(0.0) * 1000.0).round() as i64).collect();
    if milli.is_empty() || target_percent == 0 {
        return current;
    }
    let ratio = |total: i64, pods: usize| {
        let utilization = (total * 100) / (pods as i64 * 1000);
        utilization as f64 / f64::from(target_percent)
    };
    let total: i64 = milli.iter().sum();
    let usage_ratio = ratio(total, milli.len());
    let within = |r: f64| within_tolerance(r, scale_up_tolerance, scale_down_tolerance);
    let ceil = |r: f64, pods: usize| {
        let n = (r * pods as f64).ceil();
        if n >= f64::from(MAX_REPLICAS) { MAX_REPLICAS } else { n.max(0.0) as u32 }
    };
    if unready == 0 || usage_ratio <= 1.0 {
        return if within(usage_ratio) { current } else { ceil(usage_ratio, milli.len()) };
    }
    // Scaling up with unready pods: they are taken as using nothing.
    let pods = milli.len() + unready as usize;
    let new_ratio = ratio(total, pods);
    if within(new_ratio) || new_ratio < 1.0 {
        return current;
    }
    ceil(new_ratio, pods).max(current)
}

/// The smallest count above `current` that an HPA (target average 1) does not
/// swallow as noise, or `None` if none fits in `int32`.
///
/// This is what a scale-out step must be enlarged to for the HPA to act on it.
pub fn smallest_honoured_scale_up(current: u32, scale_up_tolerance: f64) -> Option<u32> {
    // For n above current the proposal is either current (swallowed) or n, and
    // the ratio grows with n, so "honoured" flips from false to true once.
    let honoured = |n: u32| external_average_value(current, f64::from(n), 1.0, scale_up_tolerance, 0.0) == n;
    let (mut low, mut high) = (current.checked_add(1)?, MAX_REPLICAS);
    if low > high || !honoured(high) {
        return None;
    }
    while low < high {
        let middle = low + (high - low) / 2;
        if honoured(middle) {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    Some(low)
}

/// The largest count below `current` that an HPA (target average 1) does not
/// swallow as noise, or `None` if every lower count is inside the tolerance.
pub fn largest_honoured_scale_down(current: u32, scale_down_tolerance: f64) -> Option<u32> {
    // Mirror image of `smallest_honoured_scale_up`: honoured for small n only.
    let honoured = |n: u32| external_average_value(current, f64::from(n), 1.0, 0.0, scale_down_tolerance) == n;
    if current == 0 || !honoured(0) {
        return None;
    }
    let (mut low, mut high) = (0, current - 1);
    while low < high {
        let middle = low + (high - low).div_ceil(2);
        if honoured(middle) {
            low = middle;
        } else {
            high = middle - 1;
        }
    }
    Some(low)
}

/// The replica count KEDA sets when an active trigger finds the workload at
/// zero (`scaleFromZeroOrIdle`): `minReplicaCount`, or 1 when that is 0.
///
/// The HPA never does this itself (at zero replicas it reports
/// `ScalingDisabled`), so an emulator of KEDA + HPA calls this first and
/// [`Hpa::reconcile`] from then on. KEDA gives the HPA the same floor as its
/// `minReplicas`.
pub fn keda_activation_replicas(min_replica_count: u32) -> u32 {
    min_replica_count.max(1)
}

/// Why a reconcile ended where it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The workload is at zero replicas: the HPA leaves it alone
    /// (`ScalingActive=False`, `ScalingDisabled`).
    ScalingDisabled,
    /// More replicas than `maxReplicas`: set to the maximum without reading the metric.
    AboveMaxReplicas,
    /// Fewer replicas than `minReplicas`: set to the minimum without reading the metric.
    BelowMinReplicas,
    /// The metric could not be read (`FailedGetExternalMetric`): nothing changes
    /// and nothing is remembered.
    MetricUnavailable,
    /// The target is not a positive milli-quantity, which the API server
    /// rejects: nothing changes.
    InvalidTarget,
    /// The metric was read; see the proposal, stabilization and limit.
    Metric,
}

/// Which bound cut the stabilized recommendation short (the reasons of the
/// `ScalingLimited` condition).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// The scale-up policies allow no more this period.
    ScaleUpLimit,
    /// `maxReplicas`.
    TooManyReplicas,
    /// The scale-down policies allow no fewer this period.
    ScaleDownLimit,
    /// `minReplicas`.
    TooFewReplicas,
}

/// The result of one reconcile, with the intermediate numbers for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The replica count the workload has after this reconcile (the current
    /// count when the HPA does not rescale).
    pub replicas: u32,
    pub reason: Reason,
    /// What the metric alone asks for, after the tolerance check.
    pub proposed: Option<u32>,
    /// The proposal after the stabilization windows.
    pub stabilized: Option<u32>,
    /// Set when the rate policies or min/max moved `replicas` away from `stabilized`.
    pub limited_by: Option<Limit>,
}

impl Outcome {
    fn without_metric(replicas: u32, reason: Reason) -> Self {
        Self { replicas, reason, proposed: None, stabilized: None, limited_by: None }
    }
}

/// An unstabilized recommendation, remembered for the stabilization windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Recommendation {
    replicas: u32,
    at_ms: u64,
}

/// A rescale, remembered for the rate policies. `outdated` marks a slot the
/// next event in the same direction may reuse (`markScaleEventsOutdated`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ScaleEvent {
    change: u32,
    at_ms: u64,
    outdated: bool,
}

/// Whether an instant lies inside the window of `window_ms` that ends now.
/// The cutoff itself is outside, as with Go's `at.After(now - window)`.
fn inside_window(at_ms: u64, window_ms: u64, now_ms: u64) -> bool {
    at_ms.saturating_add(window_ms) > now_ms
}

/// Go's `at.Before(now - window)`. An instant exactly at the cutoff is neither
/// inside nor old: it no longer counts but its slot is not reused yet.
fn older_than_window(at_ms: u64, window_ms: u64, now_ms: u64) -> bool {
    at_ms.saturating_add(window_ms) < now_ms
}

fn millis(seconds: u32) -> u64 {
    u64::from(seconds) * 1000
}

/// Narrows a count computed in `i64` (to survive intermediate negatives and
/// overflow) back to a replica count.
fn narrow(count: i64) -> u32 {
    u32::try_from(count.max(0)).unwrap_or(u32::MAX)
}

/// The HPA controller for one workload, with the memory it keeps between
/// reconciles: recommendations for the stabilization windows and past scale
/// events for the rate policies.
#[derive(Debug, Clone)]
pub struct Hpa {
    spec: HpaSpec,
    /// `None` until the first reconcile, which seeds it with the current count.
    recommendations: Option<Vec<Recommendation>>,
    scale_up_events: Vec<ScaleEvent>,
    scale_down_events: Vec<ScaleEvent>,
}

impl Hpa {
    /// # Panics
    /// If `spec` fails [`HpaSpec::validate`]; use [`Hpa::try_new`] for specs from input.
    pub fn new(spec: HpaSpec) -> Self {
        match Self::try_new(spec) {
            Ok(hpa) => hpa,
            Err(error) => panic!("invalid HPA spec: {error}"),
        }
    }

    pub fn try_new(spec: HpaSpec) -> Result<Self, SpecError> {
        spec.validate()?;
        Ok(Self { spec, recommendations: None, scale_up_events: Vec::new(), scale_down_events: Vec::new() })
    }

    pub fn spec(&self) -> &HpaSpec {
        &self.spec
    }

    /// One reconcile: given the workload's current replicas and the metric
    /// value (against the AverageValue `target`), returns the replica count the
    /// HPA leaves the workload at, after tolerance, min/max, stabilization and
    /// rate policies, and remembers what the next reconcile needs.
    ///
    /// At `current == 0` this returns 0 ([`Reason::ScalingDisabled`]); see
    /// [`keda_activation_replicas`].
    pub fn reconcile(&mut self, now_ms: u64, current: u32, metric_value: f64, target: f64) -> u32 {
        self.reconcile_outcome(now_ms, current, Some(metric_value), target).replicas
    }

    /// [`Hpa::reconcile`] with a metric that may be unavailable (`None`: the
    /// external metrics API answered with an error), reporting how the count
    /// came about.
    pub fn reconcile_outcome(&mut self, now_ms: u64, current: u32, metric_value: Option<f64>, target: f64) -> Outcome {
        let (up, down) = self.tolerances();
        self.reconcile_with(now_ms, current, |current| match metric_value {
            None => Err(Reason::MetricUnavailable),
            Some(_) if keda_milli(target) <= 0 => Err(Reason::InvalidTarget),
            Some(value) => Ok(external_average_value(current, value, target, up, down)),
        })
    }

    /// The scale-up and scale-down tolerances, for a caller's own proposal.
    pub fn tolerances(&self) -> (f64, f64) {
        (self.spec.behavior.scale_up.tolerance, self.spec.behavior.scale_down.tolerance)
    }

    /// One reconcile with any metric type: `propose` turns the current count
    /// into the metric's proposal (tolerance applied, e.g. with
    /// [`resource_utilization_replicas`]), or says why there is none. It is
    /// only called when the count is inside `minReplicas..=maxReplicas`.
    pub fn reconcile_with(
        &mut self,
        now_ms: u64,
        current: u32,
        propose: impl FnOnce(u32) -> Result<u32, Reason>,
    ) -> Outcome {
        // The controller seeds its memory with the count it finds, before
        // anything can fail, so even a reconcile that does nothing else makes a
        // fresh HPA hold its size for one scale-down window.
        self.recommendations.get_or_insert_with(|| vec![Recommendation { replicas: current, at_ms: now_ms }]);

        let (min, max) = (self.spec.min_replicas, self.spec.max_replicas);
        if current == 0 {
            return Outcome::without_metric(0, Reason::ScalingDisabled);
        }
        // Out-of-bounds counts are corrected before the metric is read, so
        // neither a missing metric nor a stabilization window delays this.
        if current > max {
            self.store_scale_event(now_ms, current, max);
            return Outcome::without_metric(max, Reason::AboveMaxReplicas);
        }
        if current < min {
            self.store_scale_event(now_ms, current, min);
            return Outcome::without_metric(min, Reason::BelowMinReplicas);
        }
        let proposed = match propose(current) {
            Ok(proposed) => proposed,
            Err(reason) => return Outcome::without_metric(current, reason),
        };
        let stabilized = self.stabilize(now_ms, current, proposed);
        let (replicas, limited_by) = self.limit_rate(now_ms, current, stabilized);
        if replicas != current {
            self.store_scale_event(now_ms, current, replicas);
        }
        Outcome { replicas, reason: Reason::Metric, proposed: Some(proposed), stabilized: Some(stabilized), limited_by }
    }

    /// Bounds the move from `current` towards `proposed` by the lowest
    /// recommendation of the scale-up window (so a brief spike does not scale
    /// up) and the highest of the scale-down window (so a brief dip does not
    /// scale down), then remembers `proposed`, unstabilized.
    fn stabilize(&mut self, now_ms: u64, current: u32, proposed: u32) -> u32 {
        let up_window = millis(self.spec.behavior.scale_up.stabilization_window_seconds);
        let down_window = millis(self.spec.behavior.scale_down.stabilization_window_seconds);
        let recommendations = self.recommendations.get_or_insert_with(Vec::new);

        let (mut floor, mut ceiling) = (proposed, proposed);
        let mut reusable = None;
        for (index, recommendation) in recommendations.iter().enumerate() {
            if inside_window(recommendation.at_ms, up_window, now_ms) {
                floor = floor.min(recommendation.replicas);
            }
            if inside_window(recommendation.at_ms, down_window, now_ms) {
                ceiling = ceiling.max(recommendation.replicas);
            }
            if older_than_window(recommendation.at_ms, up_window, now_ms)
                && older_than_window(recommendation.at_ms, down_window, now_ms)
            {
                reusable = Some(index);
            }
        }

        // floor <= proposed <= ceiling, so the result lies between current and proposed.
        let stabilized = current.max(floor).min(ceiling);

        // Like the controller, overwrite one sample no window can see any more
        // instead of growing the list on every reconcile.
        let fresh = Recommendation { replicas: proposed, at_ms: now_ms };
        match reusable {
            Some(index) => recommendations[index] = fresh,
            None => recommendations.push(fresh),
        }
        stabilized
    }

    /// Applies the rate policies and then min/max to a stabilized recommendation.
    fn limit_rate(&self, now_ms: u64, current: u32, stabilized: u32) -> (u32, Option<Limit>) {
        let wanted = i64::from(stabilized);
        let current_count = i64::from(current);
        if stabilized > current {
            // A limit below the current count means recent scale-ups already
            // used the period's allowance: hold rather than shrink.
            let limit = self.scale_up_limit(now_ms, current).max(current_count);
            let max = i64::from(self.spec.max_replicas);
            let (ceiling, reason) =
                if max > limit { (limit, Limit::ScaleUpLimit) } else { (max, Limit::TooManyReplicas) };
            if wanted > ceiling {
                return (narrow(ceiling), Some(reason));
            }
        } else if stabilized < current {
            let limit = self.scale_down_limit(now_ms, current).min(current_count);
            let min = i64::from(self.spec.min_replicas);
            let (floor, reason) =
                if min < limit { (limit, Limit::ScaleDownLimit) } else { (min, Limit::TooFewReplicas) };
            if wanted < floor {
                return (narrow(floor), Some(reason));
            }
        }
        (stabilized, None)
    }

    /// The replica count at the start of a policy's period: current minus what
    /// was added plus what was removed within it. Both directions count, so a
    /// recent scale-up lowers the base a scale-down policy works from.
    fn period_start(&self, now_ms: u64, current: u32, period_seconds: u32) -> i64 {
        let changed = |events: &[ScaleEvent]| -> i64 {
            events
                .iter()
                .filter(|event| inside_window(event.at_ms, millis(period_seconds), now_ms))
                .map(|event| i64::from(event.change))
                .sum()
        };
        i64::from(current) - changed(&self.scale_up_events) + changed(&self.scale_down_events)
    }

    /// The highest count the scale-up policies allow now
    /// (`calculateScaleUpLimitWithScalingRules`).
    fn scale_up_limit(&self, now_ms: u64, current: u32) -> i64 {
        let rules = &self.spec.behavior.scale_up;
        let allowed = rules.policies.iter().map(|policy| {
            let start = self.period_start(now_ms, current, policy.period_seconds);
            match policy.kind {
                PolicyKind::Pods => start + i64::from(policy.value),
                // Rounded up so that a percentage of a small fleet still adds a pod.
                PolicyKind::Percent => (start as f64 * (1.0 + f64::from(policy.value) / 100.0)).ceil() as i64,
            }
        });
        // Validation guarantees at least one policy, so the fallbacks never apply.
        match rules.select_policy {
            SelectPolicy::Disabled => i64::from(current),
            SelectPolicy::Max => allowed.max().unwrap_or(i64::from(current)),
            SelectPolicy::Min => allowed.min().unwrap_or(i64::from(current)),
        }
    }

    /// The lowest count the scale-down policies allow now
    /// (`calculateScaleDownLimitWithBehaviors`). "Max" selects the policy that
    /// removes the most pods, i.e. the lowest count.
    fn scale_down_limit(&self, now_ms: u64, current: u32) -> i64 {
        let rules = &self.spec.behavior.scale_down;
        let allowed = rules.policies.iter().map(|policy| {
            let start = self.period_start(now_ms, current, policy.period_seconds);
            match policy.kind {
                PolicyKind::Pods => start - i64::from(policy.value),
                // Truncated towards zero, as Go's int32 conversion does.
                PolicyKind::Percent => (start as f64 * (1.0 - f64::from(policy.value) / 100.0)) as i64,
            }
        });
        match rules.select_policy {
            SelectPolicy::Disabled => i64::from(current),
            SelectPolicy::Max => allowed.min().unwrap_or(i64::from(current)),
            SelectPolicy::Min => allowed.max().unwrap_or(i64::from(current)),
        }
    }

    /// Remembers a rescale for the rate policies of its direction.
    fn store_scale_event(&mut self, now_ms: u64, previous: u32, new: u32) {
        let (events, rules, change) = if new > previous {
            (&mut self.scale_up_events, &self.spec.behavior.scale_up, new - previous)
        } else {
            (&mut self.scale_down_events, &self.spec.behavior.scale_down, previous - new)
        };
        // Slots are recycled once they are older than this direction's longest
        // period. The other direction may look further back (its own periods)
        // and still sees an old event until its slot is reused: a quirk of the
        // controller, kept so the model agrees with it.
        let longest = millis(rules.policies.iter().map(|policy| policy.period_seconds).max().unwrap_or(0));
        for event in events.iter_mut() {
            if older_than_window(event.at_ms, longest, now_ms) {
                event.outdated = true;
            }
        }
        let fresh = ScaleEvent { change, at_ms: now_ms, outdated: false };
        match events.iter().rposition(|event| event.outdated) {
            Some(index) => events[index] = fresh,
            None => events.push(fresh),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECOND: u64 = 1000;

    /// Rules that never hold anything back: no window, policies far above any
    /// change the tests make.
    fn unlimited_rules(tolerance: f64) -> ScalingRules {
        ScalingRules {
            stabilization_window_seconds: 0,
            select_policy: SelectPolicy::Max,
            policies: vec![ScalingPolicy::pods(1000, 15), ScalingPolicy::percent(1000, 15)],
            tolerance,
        }
    }

    fn unlimited(tolerance: f64) -> Behavior {
        Behavior { scale_up: unlimited_rules(tolerance), scale_down: unlimited_rules(tolerance) }
    }

    fn spec(min_replicas: u32, max_replicas: u32, behavior: Behavior) -> HpaSpec {
        HpaSpec { min_replicas, max_replicas, behavior }
    }

    #[test]
    fn tolerance_bounds_are_inside_the_band() {
        // (current, metric value, up tolerance, down tolerance, expected)
        let cases: &[(u32, f64, f64, f64, u32)] = &[
            (10, 11.0, 0.1, 0.1, 10), // ratio 1.1 is the upper bound: ignored
            (10, 12.0, 0.1, 0.1, 12),
            (10, 9.0, 0.1, 0.1, 10), // ratio 0.9 is the lower bound: ignored
            (9, 8.0, 0.1, 0.1, 8),
            (20, 22.0, 0.1, 0.1, 20),
            (20, 23.0, 0.1, 0.1, 23),
            (20, 18.0, 0.1, 0.1, 20),
            (20, 17.0, 0.1, 0.1, 17),
            (10, 10.0, 0.1, 0.1, 10),
            (10, 11.0, 0.0, 0.0, 11),
            (10, 9.0, 0.0, 0.0, 9),
            (1, 2.0, 0.1, 0.1, 2),
            (3, 0.0, 0.1, 0.1, 0),
            // Per-direction tolerances: tight up, loose down.
            (50, 51.0, 0.02, 0.2, 50),
            (50, 52.0, 0.02, 0.2, 52),
            (50, 41.0, 0.02, 0.2, 50),
            (50, 39.0, 0.02, 0.2, 39),
        ];
        for &(current, value, up, down, expected) in cases {
            assert_eq!(
                external_average_value(current, value, 1.0, up, down),
                expected,
                "current {current}, value {value}, tolerances up {up} down {down}"
            );
        }
    }

    #[test]
    fn metric_arithmetic_is_in_milli_units() {
        // 10.0004 reaches the HPA as 10000m, 10.0006 as 10001m, whose ceiling is 11.
        assert_eq!(external_average_value(5, 10.0004, 1.0, 0.1, 0.1), 10);
        assert_eq!(external_average_value(5, 10.0006, 1.0, 0.1, 0.1), 11);
        // Non-unit targets: ceil(6.5 / 2) = 4, ceil(3 / 0.5) = 6.
        assert_eq!(external_average_value(2, 6.5, 2.0, 0.1, 0.1), 4);
        assert_eq!(external_average_value(2, 3.0, 0.5, 0.1, 0.1), 6);

        assert_eq!(keda_milli(1.0), 1000);
        assert_eq!(keda_milli(2.0004), 2000);
        assert_eq!(keda_milli(2.0006), 2001);
        assert_eq!(keda_milli(-1.5), -1500);
        assert_eq!(keda_milli(-0.0001), 0);
        assert_eq!(keda_milli(f64::NAN), 0);
        assert_eq!(keda_milli(f64::INFINITY), 0);
        assert_eq!(keda_milli(1e300), i64::MAX);
    }

    #[test]
    fn edge_values_of_the_metric_and_target() {
        // From zero the ratio is infinite (or NaN), so the plain ceiling applies.
        assert_eq!(external_average_value(0, 5.0, 1.0, 0.1, 0.1), 5);
        assert_eq!(external_average_value(0, 0.0, 1.0, 0.1, 0.1), 0);
        // KEDA reports NaN as 0 and the HPA proposes no replicas.
        assert_eq!(external_average_value(5, f64::NAN, 1.0, 0.1, 0.1), 0);
        assert_eq!(external_average_value(5, -3.0, 1.0, 0.1, 0.1), 0);
        assert_eq!(external_average_value(1, 1e12, 1.0, 0.1, 0.1), MAX_REPLICAS);
        // Targets the API server rejects (not a positive quantity) change nothing.
        for target in [0.0, 0.0004, -1.0, f64::NAN] {
            assert_eq!(external_average_value(7, 10.0, target, 0.1, 0.1), 7, "target {target}");
        }
        let mut hpa = Hpa::new(spec(1, 10, unlimited(0.1)));
        assert_eq!(hpa.reconcile_outcome(0, 3, Some(9.0), 0.0).reason, Reason::InvalidTarget);
    }

    #[test]
    fn default_behavior_is_the_kubernetes_default() {
        let behavior = Behavior::default();
        assert_eq!(behavior.scale_up.stabilization_window_seconds, 0);
        assert_eq!(behavior.scale_up.select_policy, SelectPolicy::Max);
        assert_eq!(behavior.scale_up.policies, vec![ScalingPolicy::pods(4, 15), ScalingPolicy::percent(100, 15)]);
        assert_eq!(behavior.scale_down.stabilization_window_seconds, 300);
        assert_eq!(behavior.scale_down.select_policy, SelectPolicy::Max);
        assert_eq!(behavior.scale_down.policies, vec![ScalingPolicy::percent(100, 15)]);
        assert!((behavior.scale_up.tolerance - 0.1).abs() < 1e-12);
        assert!((behavior.scale_down.tolerance - 0.1).abs() < 1e-12);
        assert_eq!(HpaSpec::new(2, 50).validate(), Ok(()));
    }

    #[test]
    fn min_and_max_clamp_the_metric() {
        let mut hpa = Hpa::new(spec(2, 10, unlimited(0.1)));
        let outcome = hpa.reconcile_outcome(0, 5, Some(100.0), 1.0);
        assert_eq!((outcome.replicas, outcome.proposed), (10, Some(100)));
        assert_eq!(outcome.limited_by, Some(Limit::TooManyReplicas));

        let mut hpa = Hpa::new(spec(2, 10, unlimited(0.1)));
        let outcome = hpa.reconcile_outcome(0, 5, Some(0.0), 1.0);
        assert_eq!((outcome.replicas, outcome.proposed), (2, Some(0)));
        assert_eq!(outcome.limited_by, Some(Limit::TooFewReplicas));

        // Inside the bounds nothing is limited.
        let mut hpa = Hpa::new(spec(2, 10, unlimited(0.1)));
        let outcome = hpa.reconcile_outcome(0, 5, Some(8.0), 1.0);
        assert_eq!((outcome.replicas, outcome.limited_by), (8, None));
    }

    #[test]
    fn counts_outside_the_bounds_are_corrected_without_the_metric() {
        // The default 300 s scale-down window would hold 20 if the metric path ran.
        let mut hpa = Hpa::new(HpaSpec::new(3, 10));
        let outcome = hpa.reconcile_outcome(0, 20, None, 1.0);
        assert_eq!((outcome.replicas, outcome.reason), (10, Reason::AboveMaxReplicas));
        let outcome = hpa.reconcile_outcome(SECOND, 1, Some(1.0), 1.0);
        assert_eq!((outcome.replicas, outcome.reason), (3, Reason::BelowMinReplicas));
    }

    #[test]
    fn zero_replicas_disable_the_hpa_and_keda_activates() {
        let mut hpa = Hpa::new(HpaSpec::new(2, 10));
        let outcome = hpa.reconcile_outcome(0, 0, Some(5.0), 1.0);
        assert_eq!((outcome.replicas, outcome.reason), (0, Reason::ScalingDisabled));
        assert_eq!(keda_activation_replicas(0), 1);
        assert_eq!(keda_activation_replicas(3), 3);
    }

    #[test]
    fn unavailable_metric_keeps_current_and_remembers_nothing() {
        let mut hpa = Hpa::new(HpaSpec::new(1, 100));
        assert_eq!(hpa.reconcile(0, 10, 10.0, 1.0), 10);
        for step in 1..20 {
            let outcome = hpa.reconcile_outcome(step * 15 * SECOND, 10, None, 1.0);
            assert_eq!((outcome.replicas, outcome.reason), (10, Reason::MetricUnavailable));
        }
        // Only the t = 0 samples (10) were remembered, and at 300 s they leave the
        // window; had the failed reconciles recorded 10, it would still hold.
        assert_eq!(hpa.reconcile(300 * SECOND, 10, 5.0, 1.0), 5);
    }

    #[test]
    fn a_fresh_hpa_holds_its_size_for_one_scale_down_window() {
        let mut hpa = Hpa::new(HpaSpec::new(1, 100));
        let outcome = hpa.reconcile_outcome(0, 10, Some(5.0), 1.0);
        assert_eq!((outcome.replicas, outcome.proposed, outcome.stabilized), (10, Some(5), Some(10)));
        assert_eq!(hpa.reconcile(299 * SECOND, 10, 5.0, 1.0), 10);
        assert_eq!(hpa.reconcile(300 * SECOND, 10, 5.0, 1.0), 5);
    }

    #[test]
    fn default_scale_down_applies_the_highest_recommendation_of_the_last_300_s() {
        let mut hpa = Hpa::new(HpaSpec::new(1, 100));
        assert_eq!(hpa.reconcile(0, 10, 10.0, 1.0), 10);
        // Every 15 s a lower recommendation, cycling 8, 6, 7 (8 at multiples of 45 s).
        let lower = |t: u64| [8.0, 6.0, 7.0][(t / (15 * SECOND) % 3) as usize];
        let mut t = 15 * SECOND;
        while t < 300 * SECOND {
            assert_eq!(hpa.reconcile(t, 10, lower(t), 1.0), 10, "t = {t} ms: 10 from t = 0 is in the window");
            t += 15 * SECOND;
        }
        // At 300 s the t = 0 sample is at the (exclusive) cutoff: the highest of
        // the window is 8, not the 6 proposed now.
        let outcome = hpa.reconcile_outcome(300 * SECOND, 10, Some(6.0), 1.0);
        assert_eq!((outcome.replicas, outcome.proposed), (8, Some(6)));
        // The last 8 was proposed at 270 s, so 8 holds until 570 s.
        let mut t = 315 * SECOND;
        while t < 570 * SECOND {
            assert_eq!(hpa.reconcile(t, 8, 6.0, 1.0), 8, "t = {t} ms");
            t += 15 * SECOND;
        }
        assert_eq!(hpa.reconcile(570 * SECOND, 8, 6.0, 1.0), 6);
    }

    #[test]
    fn default_scale_up_is_max_of_double_and_plus_four_per_15_s() {
        let mut hpa = Hpa::new(HpaSpec::new(1, 100));
        let outcome = hpa.reconcile_outcome(0, 2, Some(20.0), 1.0);
        assert_eq!((outcome.replicas, outcome.proposed), (6, Some(20))); // max(2 * 2, 2 + 4)
        assert_eq!(outcome.limited_by, Some(Limit::ScaleUpLimit));
        // 5 s later the 4 added pods are still inside the period: it started at 2.
        assert_eq!(hpa.reconcile(5 * SECOND, 6, 20.0, 1.0), 6);
        // At 15 s that event is at the cutoff and no longer counts: max(12, 10).
        assert_eq!(hpa.reconcile(15 * SECOND, 6, 20.0, 1.0), 12);
        assert_eq!(hpa.reconcile(30 * SECOND, 12, 20.0, 1.0), 20);

        // On a larger fleet the percentage dominates: max(20, 14).
        let mut hpa = Hpa::new(HpaSpec::new(1, 100));
        assert_eq!(hpa.reconcile(0, 10, 50.0, 1.0), 20);
    }

    fn one_direction(rules: ScalingRules, up: bool) -> HpaSpec {
        let behavior = if up {
            Behavior { scale_up: rules, scale_down: unlimited_rules(0.1) }
        } else {
            Behavior { scale_up: unlimited_rules(0.1), scale_down: rules }
        };
        spec(1, 100, behavior)
    }

    fn rules(select_policy: SelectPolicy, policies: Vec<ScalingPolicy>) -> ScalingRules {
        ScalingRules { stabilization_window_seconds: 0, select_policy, policies, tolerance: 0.1 }
    }

    #[test]
    fn select_policy_picks_among_pods_and_percent_when_scaling_up() {
        let policies = vec![ScalingPolicy::pods(4, 60), ScalingPolicy::percent(50, 60)];
        for (select, expected) in [(SelectPolicy::Max, 15), (SelectPolicy::Min, 14), (SelectPolicy::Disabled, 10)] {
            let mut hpa = Hpa::new(one_direction(rules(select, policies.clone()), true));
            let outcome = hpa.reconcile_outcome(0, 10, Some(50.0), 1.0);
            assert_eq!(outcome.replicas, expected, "{select:?}");
            assert_eq!(outcome.limited_by, Some(Limit::ScaleUpLimit), "{select:?}");
        }
    }

    #[test]
    fn select_policy_picks_among_pods_and_percent_when_scaling_down() {
        let policies = vec![ScalingPolicy::pods(5, 60), ScalingPolicy::percent(50, 60)];
        for (select, expected) in [(SelectPolicy::Max, 20), (SelectPolicy::Min, 35), (SelectPolicy::Disabled, 40)] {
            let mut hpa = Hpa::new(one_direction(rules(select, policies.clone()), false));
            let outcome = hpa.reconcile_outcome(0, 40, Some(1.0), 1.0);
            assert_eq!(outcome.replicas, expected, "{select:?}");
            assert_eq!(outcome.limited_by, Some(Limit::ScaleDownLimit), "{select:?}");
        }
    }

    #[test]
    fn percent_rounds_up_when_growing_and_truncates_when_shrinking() {
        let ten_percent = || rules(SelectPolicy::Max, vec![ScalingPolicy::percent(10, 60)]);
        // 3 * 1.1 = 3.3 -> 4: a small percentage still adds a pod.
        let mut hpa = Hpa::new(one_direction(ten_percent(), true));
        assert_eq!(hpa.reconcile(0, 3, 30.0, 1.0), 4);
        // 3 * 0.9 = 2.7 -> 2.
        let mut hpa = Hpa::new(one_direction(ten_percent(), false));
        assert_eq!(hpa.reconcile(0, 3, 1.0, 1.0), 2);
    }

    /// The examples of the Kubernetes documentation ("Horizontal Pod
    /// Autoscaling": algorithm details, and scaling policies).
    #[test]
    fn resource_utilization_follows_the_documented_examples() {
        // "200m against a target of 100m: the number of replicas is doubled;
        // 50m: halved; within the tolerance (0.1): no change."
        assert_eq!(resource_utilization_replicas(4, &[2.0; 4], 0, 100, 0.1, 0.1), 8);
        assert_eq!(resource_utilization_replicas(4, &[0.5; 4], 0, 100, 0.1, 0.1), 2);
        assert_eq!(resource_utilization_replicas(4, &[1.05; 4], 0, 100, 0.1, 0.1), 4);
        // Utilization is a whole percent of the summed requests: 0.7004 is 70 %.
        assert_eq!(resource_utilization_replicas(3, &[0.7004, 0.7, 0.7], 0, 70, 0.0, 0.0), 3);
        // "Pods not yet ready are taken as using 0 % when scaling up, which
        // dampens the scale-up": 2 ready at 140 % of a 70 % target propose 4,
        // with 2 more unready the average is the target and nothing changes.
        assert_eq!(resource_utilization_replicas(2, &[1.4, 1.4], 0, 70, 0.1, 0.1), 4);
        assert_eq!(resource_utilization_replicas(4, &[1.4, 1.4], 2, 70, 0.1, 0.1), 4);
        assert_eq!(resource_utilization_replicas(4, &[2.1, 2.1], 2, 70, 0.1, 0.1), 6);
        // "...and ignored when scaling down": the ready pods alone decide.
        assert_eq!(resource_utilization_replicas(4, &[0.35, 0.35], 2, 70, 0.1, 0.1), 1);
        // No ready pod, no metric.
        assert_eq!(resource_utilization_replicas(3, &[], 3, 70, 0.1, 0.1), 3);

        // Scaling policies: "Pods 4 and Percent 10 per 60 s, 80 replicas to
        // be scaled down to 10: the first step removes 8; at 72, 10 % is 7.2,
        // rounded up to 8" (the Max policy wins over 4 pods).
        let scale_down = rules(SelectPolicy::Max, vec![ScalingPolicy::pods(4, 60), ScalingPolicy::percent(10, 60)]);
        let mut hpa = Hpa::new(spec(1, 100, Behavior { scale_up: unlimited_rules(0.1), scale_down }));
        let (up, down) = hpa.tolerances();
        let usage = |pods: usize| vec![0.125; pods];
        let mut at = |now: u64, current: u32| {
            hpa.reconcile_with(now, current, |c| {
                Ok(resource_utilization_replicas(c, &usage(c as usize), 0, 100, up, down))
            })
            .replicas
        };
        assert_eq!(at(0, 80), 72);
        assert_eq!(at(30 * SECOND, 72), 72, "the period's allowance is used up");
        assert_eq!(at(61 * SECOND, 72), 64);
        assert_eq!(at(122 * SECOND, 64), 57, "10 % of 64 is 6.4, rounded up to 7");
        // "When the number of replicas falls under 40, the Pods policy (4) is
        // the larger change": 10 % of 30 would remove 3.
        assert_eq!(at(10_000 * SECOND, 30), 26);
    }

    #[test]
    fn scale_up_stabilization_applies_the_lowest_recommendation_of_its_window() {
        let scale_up = ScalingRules { stabilization_window_seconds: 60, ..unlimited_rules(0.1) };
        let mut hpa = Hpa::new(spec(1, 100, Behavior { scale_up, scale_down: unlimited_rules(0.1) }));
        assert_eq!(hpa.reconcile(0, 10, 10.0, 1.0), 10);
        for t in [15, 30, 45] {
            assert_eq!(hpa.reconcile(t * SECOND, 10, 20.0, 1.0), 10, "t = {t} s");
        }
        assert_eq!(hpa.reconcile(60 * SECOND, 10, 20.0, 1.0), 20);
    }

    #[test]
    fn scale_downs_use_up_the_allowance_of_their_period() {
        let scale_down = rules(SelectPolicy::Max, vec![ScalingPolicy::pods(2, 60)]);
        let mut hpa = Hpa::new(one_direction(scale_down, false));
        assert_eq!(hpa.reconcile(0, 10, 1.0, 1.0), 8);
        // The period started at 8 + 2 = 10: both pods of the allowance are spent.
        let outcome = hpa.reconcile_outcome(5 * SECOND, 8, Some(1.0), 1.0);
        assert_eq!((outcome.replicas, outcome.limited_by), (8, Some(Limit::ScaleDownLimit)));
        assert_eq!(hpa.reconcile(59 * SECOND, 8, 1.0, 1.0), 8);
        // At 60 s the first scale-down is at the cutoff and no longer counts.
        assert_eq!(hpa.reconcile(60 * SECOND, 8, 1.0, 1.0), 6);
    }

    #[test]
    fn a_recent_scale_up_lowers_the_base_of_scale_down_policies() {
        let scale_down = rules(SelectPolicy::Max, vec![ScalingPolicy::pods(1, 60)]);
        let behavior = Behavior { scale_up: ScalingRules::default_scale_up(), scale_down: scale_down.clone() };
        let mut hpa = Hpa::new(spec(1, 100, behavior.clone()));
        assert_eq!(hpa.reconcile(0, 2, 6.0, 1.0), 6);
        // The period started at 6 - 4 = 2 replicas, so "1 pod per 60 s" allows 1.
        assert_eq!(hpa.reconcile(5 * SECOND, 6, 1.0, 1.0), 1);

        // Without the scale-up only one pod goes.
        let mut hpa = Hpa::new(spec(1, 100, behavior));
        assert_eq!(hpa.reconcile(5 * SECOND, 6, 1.0, 1.0), 5);
    }

    #[test]
    fn unlimited_behavior_lands_exactly_on_the_desired_count_in_one_reconcile() {
        for current in 1..=60u32 {
            for desired in 1..=60u32 {
                let mut hpa = Hpa::new(spec(1, 60, unlimited(0.0)));
                let outcome = hpa.reconcile_outcome(SECOND, current, Some(f64::from(desired)), 1.0);
                assert_eq!(outcome.replicas, desired, "{current} -> {desired}: {outcome:?}");
                assert_eq!(outcome.limited_by, None, "{current} -> {desired}");
            }
        }
    }

    #[test]
    fn honoured_steps_are_the_first_outside_the_tolerance() {
        assert_eq!(smallest_honoured_scale_up(10, 0.1), Some(12));
        assert_eq!(smallest_honoured_scale_up(20, 0.1), Some(23));
        assert_eq!(smallest_honoured_scale_up(1, 0.1), Some(2));
        assert_eq!(smallest_honoured_scale_up(MAX_REPLICAS, 0.1), None);
        assert_eq!(largest_honoured_scale_down(10, 0.1), Some(8));
        assert_eq!(largest_honoured_scale_down(9, 0.1), Some(8));
        assert_eq!(largest_honoured_scale_down(20, 0.1), Some(17));
        assert_eq!(largest_honoured_scale_down(0, 0.1), None);
        assert_eq!(largest_honoured_scale_down(1, 1.0), None); // 0 / 1 is within a 100 % band

        for current in 1..=200u32 {
            let up = smallest_honoured_scale_up(current, 0.1).expect("some count is honoured");
            let down = largest_honoured_scale_down(current, 0.1).expect("0 is honoured");
            for n in down + 1..up {
                assert_eq!(external_average_value(current, f64::from(n), 1.0, 0.1, 0.1), current, "{current}: {n}");
            }
            assert_eq!(external_average_value(current, f64::from(up), 1.0, 0.1, 0.1), up, "{current}");
            assert_eq!(external_average_value(current, f64::from(down), 1.0, 0.1, 0.1), down, "{current}");
        }
    }

    #[test]
    fn validation_rejects_what_the_api_server_rejects() {
        assert_eq!(HpaSpec::new(0, 0).validate(), Err(SpecError::MaxReplicas(0)));
        assert_eq!(HpaSpec::new(5, 3).validate(), Err(SpecError::MinAboveMax { min: 5, max: 3 }));
        assert_eq!(HpaSpec::new(0, 3).validate(), Ok(()));

        let with_down = |scale_down: ScalingRules| spec(1, 10, Behavior { scale_down, ..Behavior::default() });
        let base = ScalingRules::default_scale_down;
        let cases = [
            (
                ScalingRules { stabilization_window_seconds: 3601, ..base() },
                SpecError::StabilizationWindow(Direction::ScaleDown, 3601),
            ),
            (ScalingRules { policies: vec![], ..base() }, SpecError::NoPolicies(Direction::ScaleDown)),
            (
                ScalingRules { policies: vec![ScalingPolicy::pods(0, 15)], ..base() },
                SpecError::PolicyValue { direction: Direction::ScaleDown, index: 0, value: 0 },
            ),
            (
                ScalingRules { policies: vec![ScalingPolicy::pods(1, 15), ScalingPolicy::percent(10, 1801)], ..base() },
                SpecError::PolicyPeriod { direction: Direction::ScaleDown, index: 1, period: 1801 },
            ),
        ];
        for (rules, expected) in cases {
            assert_eq!(with_down(rules).validate(), Err(expected));
        }
        let negative = with_down(ScalingRules { tolerance: -0.1, ..base() });
        assert!(matches!(negative.validate(), Err(SpecError::Tolerance(Direction::ScaleDown, _))));
        assert!(Hpa::try_new(negative).is_err());
        assert!(SpecError::NoPolicies(Direction::ScaleUp).to_string().contains("behavior.scaleUp.policies"));
    }

    fn arbitrary_rules() -> impl Strategy<Value = ScalingRules> {
        let select = prop_oneof![Just(SelectPolicy::Max), Just(SelectPolicy::Min), Just(SelectPolicy::Disabled)];
        let policy = (any::<bool>(), 1u32..=200, 1u32..=120).prop_map(|(pods, value, period)| {
            if pods { ScalingPolicy::pods(value, period) } else { ScalingPolicy::percent(value, period) }
        });
        (0u32..=120, select, prop::collection::vec(policy, 1..=3), 0.0f64..0.3).prop_map(
            |(stabilization_window_seconds, select_policy, policies, tolerance)| ScalingRules {
                stabilization_window_seconds,
                select_policy,
                policies,
                tolerance,
            },
        )
    }

    proptest! {
        /// Whatever the behavior and history, a reconcile stays within min/max,
        /// never overshoots the (clamped) proposal and never moves away from it.
        #[test]
        fn every_reconcile_moves_towards_the_clamped_proposal(
            min in 1u32..=5,
            span in 0u32..=40,
            scale_up in arbitrary_rules(),
            scale_down in arbitrary_rules(),
            start in 1u32..=60,
            steps in prop::collection::vec((0u64..=30_000, prop::option::of(0.0f64..80.0)), 1..40),
        ) {
            let max = min + span;
            let mut hpa = Hpa::new(spec(min, max, Behavior { scale_up, scale_down }));
            let (mut current, mut now) = (start, 0);
            for (elapsed, metric) in steps {
                now += elapsed;
                let outcome = hpa.reconcile_outcome(now, current, metric, 1.0);
                prop_assert!((min..=max).contains(&outcome.replicas), "{outcome:?}");
                match outcome.reason {
                    Reason::AboveMaxReplicas => prop_assert_eq!(outcome.replicas, max),
                    Reason::BelowMinReplicas => prop_assert_eq!(outcome.replicas, min),
                    Reason::MetricUnavailable => prop_assert_eq!(outcome.replicas, current),
                    Reason::Metric => {
                        let goal = outcome.proposed.expect("a metric outcome has a proposal").clamp(min, max);
                        let (low, high) = (current.min(goal), current.max(goal));
                        prop_assert!(
                            (low..=high).contains(&outcome.replicas),
                            "{current} -> {outcome:?}, clamped proposal {goal}"
                        );
                    }
                    Reason::ScalingDisabled | Reason::InvalidTarget => prop_assert!(false, "{outcome:?}"),
                }
                current = outcome.replicas;
            }
        }
    }
}
