//! Every threshold of the scaling engine, with its documented default. Each
//! is a flag `--x-y` with the environment variable `RTC_X_Y`.

use clap::Args;

/// The scaling engine's settings. Fractions are of a node's capacity or of
/// its container's limit (set a signal's thresholds above 1 to leave it
/// out); durations are milliseconds.
#[derive(Debug, Clone, Args, PartialEq)]
pub struct ScaleConfig {
    /// Fewest socket nodes wanted, whatever the load.
    #[arg(long = "min-replicas", env = "RTC_MIN_REPLICAS", default_value_t = 2)]
    pub min_replicas: u32,
    /// Most socket nodes ever asked for.
    #[arg(long = "max-replicas", env = "RTC_MAX_REPLICAS", default_value_t = 50)]
    pub max_replicas: u32,
    /// How often the leader decides (and writes `rtc:scale:decision`).
    #[arg(long = "decision-interval-ms", env = "RTC_DECISION_INTERVAL_MS", default_value_t = 2_000)]
    pub decision_interval_ms: u64,

    /// Connections per node (fraction of capacity) capacity arithmetic aims at.
    #[arg(long = "scale-connections-target", env = "RTC_SCALE_CONNECTIONS_TARGET", default_value_t = 0.70)]
    pub connections_target: f64,
    /// Connections fraction that makes a node hot (fleet average: high urgency).
    #[arg(long = "scale-connections-high", env = "RTC_SCALE_CONNECTIONS_HIGH", default_value_t = 0.80)]
    pub connections_high: f64,
    /// Connections fraction that is critical.
    #[arg(long = "scale-connections-critical", env = "RTC_SCALE_CONNECTIONS_CRITICAL", default_value_t = 0.95)]
    pub connections_critical: f64,
    /// Scale-in: a node may go when the connections fraction the rest would
    /// have stays under this (the gap to the target keeps the next
    /// scale-out from undoing it). Likewise `*-low` for CPU and memory.
    #[arg(long = "scale-connections-low", env = "RTC_SCALE_CONNECTIONS_LOW", default_value_t = 0.60)]
    pub connections_low: f64,

    /// CPU fraction capacity arithmetic aims at.
    #[arg(long = "scale-cpu-target", env = "RTC_SCALE_CPU_TARGET", default_value_t = 0.70)]
    pub cpu_target: f64,
    #[arg(long = "scale-cpu-high", env = "RTC_SCALE_CPU_HIGH", default_value_t = 0.80)]
    pub cpu_high: f64,
    #[arg(long = "scale-cpu-critical", env = "RTC_SCALE_CPU_CRITICAL", default_value_t = 0.90)]
    pub cpu_critical: f64,
    #[arg(long = "scale-cpu-low", env = "RTC_SCALE_CPU_LOW", default_value_t = 0.60)]
    pub cpu_low: f64,

    /// Memory fraction capacity arithmetic aims at.
    #[arg(long = "scale-memory-target", env = "RTC_SCALE_MEMORY_TARGET", default_value_t = 0.70)]
    pub memory_target: f64,
    #[arg(long = "scale-memory-high", env = "RTC_SCALE_MEMORY_HIGH", default_value_t = 0.80)]
    pub memory_high: f64,
    #[arg(long = "scale-memory-critical", env = "RTC_SCALE_MEMORY_CRITICAL", default_value_t = 0.90)]
    pub memory_critical: f64,
    #[arg(long = "scale-memory-low", env = "RTC_SCALE_MEMORY_LOW", default_value_t = 0.60)]
    pub memory_low: f64,

    /// Messages/s delivered per node that capacity arithmetic aims at
    /// (0 leaves message rate out of the arithmetic).
    #[arg(long = "scale-mps-target", env = "RTC_SCALE_MPS_TARGET", default_value_t = 20_000.0)]
    pub mps_target: f64,

    /// P95 delivery latency objective: above it a node is hot, above twice
    /// it critical, under half of it calm.
    #[arg(long = "scale-latency-slo-ms", env = "RTC_SCALE_LATENCY_SLO_MS", default_value_t = 100.0)]
    pub latency_slo_ms: f64,
    /// Kafka lag (messages) per node that makes it hot.
    #[arg(long = "scale-lag-high", env = "RTC_SCALE_LAG_HIGH", default_value_t = 10_000)]
    pub lag_high: u64,
    #[arg(long = "scale-lag-critical", env = "RTC_SCALE_LAG_CRITICAL", default_value_t = 100_000)]
    pub lag_critical: u64,
    #[arg(long = "scale-lag-low", env = "RTC_SCALE_LAG_LOW", default_value_t = 1_000)]
    pub lag_low: u64,

    /// Time from asking for a node to it serving: the engine acts on the
    /// load predicted this far ahead (trend), and waits up to twice this for
    /// nodes it asked for before asking again at the same urgency.
    #[arg(long = "scale-node-startup-ms", env = "RTC_SCALE_NODE_STARTUP_MS", default_value_t = 30_000)]
    pub node_startup_ms: u64,
    /// Span over which slopes (trends) are fitted.
    #[arg(long = "scale-trend-window-ms", env = "RTC_SCALE_TREND_WINDOW_MS", default_value_t = 60_000)]
    pub trend_window_ms: u64,
    /// Largest scale-out step.
    #[arg(long = "scale-max-step", env = "RTC_SCALE_MAX_STEP", default_value_t = 5)]
    pub max_step: u32,
    /// Scale-outs within this span of each other count as consecutive and
    /// double the step.
    #[arg(long = "scale-consecutive-window-ms", env = "RTC_SCALE_CONSECUTIVE_WINDOW_MS", default_value_t = 180_000)]
    pub consecutive_window_ms: u64,

    /// There must be room for a node fewer (every signal's projection under
    /// its low watermark) this long before a scale-in; the nodes removed are
    /// those there was room for all along, and after a removal the window's
    /// readings count less the nodes removed.
    #[arg(long = "scale-in-window-ms", env = "RTC_SCALE_IN_WINDOW_MS", default_value_t = 300_000)]
    pub scale_in_window_ms: u64,
    /// No scale-in this long after a scale-out.
    #[arg(long = "scale-in-cooldown-ms", env = "RTC_SCALE_IN_COOLDOWN_MS", default_value_t = 600_000)]
    pub scale_in_cooldown_ms: u64,
    /// Most nodes removed by one scale-in. A step the HPA's tolerance would
    /// swallow is held (and says so).
    #[arg(long = "scale-in-max-step", env = "RTC_SCALE_IN_MAX_STEP", default_value_t = 5)]
    pub scale_in_max_step: u32,
    /// Longest wait for a drained node's connections to leave.
    #[arg(long = "scale-drain-deadline-ms", env = "RTC_SCALE_DRAIN_DEADLINE_MS", default_value_t = 60_000)]
    pub drain_deadline_ms: u64,
    /// Longest wait for a removed node to stop before it serves again.
    #[arg(long = "scale-retire-timeout-ms", env = "RTC_SCALE_RETIRE_TIMEOUT_MS", default_value_t = 300_000)]
    pub retire_timeout_ms: u64,

    /// The HPA's tolerance: it ignores a desired count within this fraction
    /// of the current one (Kubernetes default 0.1).
    #[arg(long = "hpa-tolerance", env = "RTC_HPA_TOLERANCE", default_value_t = 0.1)]
    pub hpa_tolerance: f64,
}

impl Default for ScaleConfig {
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            config: ScaleConfig,
        }
        <Defaults as clap::Parser>::parse_from(["defaults"]).config
    }
}

impl ScaleConfig {
    /// Bounds that make the rules meaningful, checked at start.
    pub fn validate(&self) -> Result<(), String> {
        if self.min_replicas == 0 || self.min_replicas > self.max_replicas {
            return Err(format!("need 1 <= min replicas ({}) <= max ({})", self.min_replicas, self.max_replicas));
        }
        let ordered = |name: &str, low: f64, target: f64, high: f64, critical: f64| {
            // Values above 1 are allowed: they leave the signal out (on one
            // machine, nodes without a container limit report the host's CPU).
            if 0.0 < low && low < target && target <= high && high <= critical {
                Ok(())
            } else {
                Err(format!("{name}: need 0 < low < target <= high <= critical"))
            }
        };
        ordered(
            "connections",
            self.connections_low,
            self.connections_target,
            self.connections_high,
            self.connections_critical,
        )?;
        ordered("cpu", self.cpu_low, self.cpu_target, self.cpu_high, self.cpu_critical)?;
        ordered("memory", self.memory_low, self.memory_target, self.memory_high, self.memory_critical)?;
        if !(self.lag_low < self.lag_high && self.lag_high <= self.lag_critical) {
            return Err("kafka lag: need low < high <= critical".into());
        }
        if self.latency_slo_ms <= 0.0 || self.mps_target < 0.0 || !(0.0..1.0).contains(&self.hpa_tolerance) {
            return Err("latency SLO > 0, mps target >= 0 and 0 <= HPA tolerance < 1".into());
        }
        if self.max_step == 0 || self.scale_in_max_step == 0 || self.decision_interval_ms == 0 {
            return Err("steps and the decision interval must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones_and_valid() {
        let c = ScaleConfig::default();
        assert_eq!((c.min_replicas, c.max_replicas, c.max_step), (2, 50, 5));
        assert_eq!((c.scale_in_window_ms, c.hpa_tolerance), (300_000, 0.1));
        c.validate().unwrap();
        let bad = ScaleConfig { connections_low: 0.9, ..c.clone() };
        assert!(bad.validate().unwrap_err().contains("connections"));
        assert!(ScaleConfig { min_replicas: 60, ..c }.validate().is_err());
    }
}
