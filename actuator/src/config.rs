//! Settings of the local actuator, parsed in one place. Every setting is a
//! flag with an `RTC_<NAME>` environment variable.
//!
//! The flags mirror what a cluster spreads over three objects: the KEDA
//! `ScaledObject` (scaler address, `minReplicaCount`, `fallback`, the cpu and
//! memory backup triggers, `cooldownPeriod`), the HPA it creates (`maxReplicas`,
//! tolerance, `behavior`) and the socket workload (its command, kind and the
//! settings every pod gets).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};
use rtc_core::config::{RedisArgs, TopicArgs};
use rtc_core::hpa::{Behavior, DEFAULT_TOLERANCE, HpaSpec, ScalingPolicy, ScalingRules, SelectPolicy, SpecError};

/// rtc local actuator: does on one machine what KEDA and the HPA do in a
/// cluster. Polls the rtc KEDA scaler over gRPC, applies the HPA rules and
/// starts or stops socket-node processes to match. Arguments after `--` are
/// passed to every socket node.
#[derive(Debug, Clone, Parser)]
#[command(name = "local-actuator", version, about)]
pub struct Config {
    /// The scaler's gRPC endpoint (KEDA's `scalerAddress`).
    #[arg(long, env = "RTC_SCALER_ADDRESS", default_value = "http://127.0.0.1:9090")]
    pub scaler_address: String,
    /// Name of the emulated ScaledObject (sent in `ScaledObjectRef`).
    #[arg(long, env = "RTC_SCALED_OBJECT", default_value = "socket")]
    pub scaled_object: String,
    /// Namespace of the emulated ScaledObject (sent in `ScaledObjectRef`).
    #[arg(long, env = "RTC_NAMESPACE", default_value = "rtc")]
    pub namespace: String,
    /// The trigger's `metadata.metricName` (unset: the scaler's default).
    #[arg(long, env = "RTC_METRIC_NAME")]
    pub metric_name: Option<String>,
    /// How often KEDA and the HPA sync (the HPA's `--horizontal-pod-autoscaler-sync-period`).
    #[arg(long, env = "RTC_SYNC_PERIOD_MS", default_value_t = 15_000,
          value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub sync_period_ms: u64,
    /// Longest wait for one gRPC answer from the scaler; past it the call failed.
    #[arg(long, env = "RTC_SCALER_TIMEOUT_MS", default_value_t = 2_000,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub scaler_timeout_ms: u64,
    /// KEDA `fallback.replicas`: the count to scale to while the scaler fails
    /// (unset: no fallback, the HPA holds the count).
    #[arg(long, env = "RTC_FALLBACK_REPLICAS", value_parser = clap::value_parser!(u32).range(1..))]
    pub fallback_replicas: Option<u32>,
    /// KEDA `fallback.failureThreshold`: the fallback applies once more than
    /// this many consecutive metric reads failed.
    #[arg(long, env = "RTC_FALLBACK_FAILURE_THRESHOLD", default_value_t = 3)]
    pub fallback_failure_threshold: u32,
    /// KEDA `cooldownPeriod`: with `--min-replicas 0`, how long the scaler must
    /// report inactive before the workload goes to zero.
    #[arg(long, env = "RTC_COOLDOWN_PERIOD_MS", default_value_t = 300_000)]
    pub cooldown_period_ms: u64,
    /// Backup trigger: mean CPU (fraction of the node's limit, from its
    /// heartbeats) the HPA aims for, like KEDA's `cpu` trigger with
    /// `Utilization` (unset: no cpu rule).
    #[arg(long, env = "RTC_BACKUP_CPU_TARGET", value_parser = parse_utilization)]
    pub backup_cpu_target: Option<f64>,
    /// Backup trigger: mean memory (fraction of the node's limit) the HPA
    /// aims for, like KEDA's `memory` trigger (unset: no memory rule).
    #[arg(long, env = "RTC_BACKUP_MEMORY_TARGET", value_parser = parse_utilization)]
    pub backup_memory_target: Option<f64>,

    /// KEDA `minReplicaCount` (the HPA gets max(this, 1); 0 allows scaling to zero).
    #[arg(long, env = "RTC_MIN_REPLICAS", default_value_t = 2)]
    pub min_replicas: u32,
    /// KEDA `maxReplicaCount` / HPA `maxReplicas`.
    #[arg(long, env = "RTC_MAX_REPLICAS", default_value_t = 50)]
    pub max_replicas: u32,
    /// HPA tolerance around a usage ratio of 1, both directions
    /// (`--horizontal-pod-autoscaler-tolerance`; the load balancer's
    /// `--hpa-tolerance` must agree).
    #[arg(long, env = "RTC_HPA_TOLERANCE", default_value_t = DEFAULT_TOLERANCE, value_parser = parse_tolerance)]
    pub hpa_tolerance: f64,
    /// `behavior.scaleUp.tolerance` (default: `--hpa-tolerance`).
    #[arg(long, env = "RTC_SCALE_UP_TOLERANCE", value_parser = parse_tolerance)]
    pub scale_up_tolerance: Option<f64>,
    /// `behavior.scaleDown.tolerance` (default: `--hpa-tolerance`).
    #[arg(long, env = "RTC_SCALE_DOWN_TOLERANCE", value_parser = parse_tolerance)]
    pub scale_down_tolerance: Option<f64>,
    /// `behavior.scaleUp.stabilizationWindowSeconds`.
    #[arg(long, env = "RTC_SCALE_UP_STABILIZATION_S", default_value_t = 0)]
    pub scale_up_stabilization_s: u32,
    /// `behavior.scaleDown.stabilizationWindowSeconds`.
    #[arg(long, env = "RTC_SCALE_DOWN_STABILIZATION_S",
          default_value_t = rtc_core::hpa::DEFAULT_SCALE_DOWN_STABILIZATION_SECONDS)]
    pub scale_down_stabilization_s: u32,
    /// `behavior.scaleUp.policies`: `KIND:VALUE:PERIOD_S` entries, comma
    /// separated, KIND `pods` or `percent`.
    #[arg(long, env = "RTC_SCALE_UP_POLICIES", default_value = "pods:4:15,percent:100:15", value_parser = parse_policies)]
    pub scale_up_policies: Policies,
    /// `behavior.scaleDown.policies`, as `--scale-up-policies`.
    #[arg(long, env = "RTC_SCALE_DOWN_POLICIES", default_value = "percent:100:15", value_parser = parse_policies)]
    pub scale_down_policies: Policies,
    /// `behavior.scaleUp.selectPolicy`.
    #[arg(long, env = "RTC_SCALE_UP_SELECT", value_enum, default_value_t = Select::Max)]
    pub scale_up_select: Select,
    /// `behavior.scaleDown.selectPolicy`.
    #[arg(long, env = "RTC_SCALE_DOWN_SELECT", value_enum, default_value_t = Select::Max)]
    pub scale_down_select: Select,

    /// How pods are named and which goes first on scale-in: `deployment`
    /// (fresh `<prefix>-<n>` names; drained, then not ready, then newest go
    /// first) or `statefulset` (ordinals `<prefix>-0…`; highest goes first).
    /// Match the load balancer's `--kind`.
    #[arg(long, env = "RTC_WORKLOAD", value_enum, default_value_t = Workload::Deployment)]
    pub workload: Workload,
    /// The socket-node binary each pod runs.
    #[arg(long, env = "RTC_SOCKET_BIN", default_value = "target/release/socket")]
    pub socket_bin: PathBuf,
    /// Pod names (node ids) are `<prefix>-<n>`.
    #[arg(long, env = "RTC_POD_NAME_PREFIX", default_value = "socket")]
    pub pod_name_prefix: String,
    /// Address the nodes listen on (each gets two free ports on it).
    #[arg(long, env = "RTC_POD_HOST", default_value = "127.0.0.1")]
    pub pod_host: IpAddr,
    /// Each node's output goes to `DIR/<node id>.log` (appended); unset: to
    /// this process's stderr.
    #[arg(long, env = "RTC_LOG_DIR")]
    pub log_dir: Option<PathBuf>,
    /// On scale-in and shutdown, how long a node gets between SIGTERM (it
    /// drains) and SIGKILL (`terminationGracePeriodSeconds`).
    #[arg(long, env = "RTC_TERMINATION_GRACE_MS", default_value_t = 30_000)]
    pub termination_grace_ms: u64,
    /// Wrap each node in `setpriv --pdeathsig TERM` (when `setpriv` is on the
    /// PATH), so nodes stop even if this process is killed with SIGKILL.
    #[arg(long, env = "RTC_PARENT_DEATH_SIGNAL", default_value_t = true, action = ArgAction::Set)]
    pub parent_death_signal: bool,
    /// Appends one JSON object per sync and per action (JSONL) for reports.
    #[arg(long, env = "RTC_EVENTS_FILE")]
    pub events_file: Option<PathBuf>,
    /// Admin listen address: `/metrics`, `/livez`, `/v1/status`.
    #[arg(long, env = "RTC_ADMIN_LISTEN", default_value = "127.0.0.1:9190")]
    pub admin_listen: String,

    /// Where the nodes' heartbeats and the assignment are (also passed to every node).
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Passed to every node.
    #[command(flatten)]
    pub topic: TopicArgs,
    /// Kafka bootstrap servers, passed to every node (unset: each node starts
    /// an embedded Kafka of its own, which only suits a single node).
    #[arg(long, env = "RTC_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Connect-token secret, passed to every node (unset: the node's default).
    #[arg(long, env = "RTC_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,
    /// Sessions each node is sized for, passed to every node (unset: the node's default).
    #[arg(long, env = "RTC_CAPACITY")]
    pub capacity: Option<u64>,
    /// Heartbeat period, passed to every node; a heartbeat older than 3 of
    /// these counts as missing for the backup rules.
    #[arg(long, env = "RTC_HEARTBEAT_INTERVAL_MS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub heartbeat_interval_ms: u64,
    /// Extra arguments for every socket node (after `--`).
    #[arg(last = true)]
    pub node_args: Vec<String>,
}

/// The workload controller being emulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    Deployment,
    Statefulset,
}

/// `selectPolicy` as a flag value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Select {
    Max,
    Min,
    Disabled,
}

impl From<Select> for SelectPolicy {
    fn from(s: Select) -> Self {
        match s {
            Select::Max => SelectPolicy::Max,
            Select::Min => SelectPolicy::Min,
            Select::Disabled => SelectPolicy::Disabled,
        }
    }
}

/// A parsed policy list (a newtype so clap does not read it as repeated values).
#[derive(Debug, Clone, PartialEq)]
pub struct Policies(pub Vec<ScalingPolicy>);

fn parse_policies(raw: &str) -> Result<Policies, String> {
    raw.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|entry| {
            let parts: Vec<&str> = entry.trim().split(':').collect();
            let [kind, value, period] = parts.as_slice() else {
                return Err(format!("{entry:?}: expected KIND:VALUE:PERIOD_S"));
            };
            let value: u32 = value.parse().map_err(|_| format!("{entry:?}: bad value {value:?}"))?;
            let period: u32 = period.parse().map_err(|_| format!("{entry:?}: bad period {period:?}"))?;
            match kind.to_ascii_lowercase().as_str() {
                "pods" => Ok(ScalingPolicy::pods(value, period)),
                "percent" => Ok(ScalingPolicy::percent(value, period)),
                other => Err(format!("{entry:?}: kind {other:?} is not pods or percent")),
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Policies)
}

fn parse_tolerance(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(t) if t.is_finite() && t >= 0.0 => Ok(t),
        _ => Err(format!("{raw:?} is not a number >= 0")),
    }
}

fn parse_utilization(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(t) if t.is_finite() && t > 0.0 => Ok(t),
        _ => Err(format!("{raw:?} is not a fraction > 0 (0.7 = 70 %)")),
    }
}

impl Config {
    /// The HPA as KEDA would create it. Tolerances are the configured ones;
    /// see [`crate::sync`] for where they are applied.
    pub fn hpa_spec(&self) -> Result<HpaSpec, SpecError> {
        let rules = |window, select: Select, policies: &Policies, tolerance| ScalingRules {
            stabilization_window_seconds: window,
            select_policy: select.into(),
            policies: policies.0.clone(),
            tolerance,
        };
        let spec = HpaSpec {
            // KEDA gives the HPA max(minReplicaCount, 1) and handles zero itself.
            min_replicas: self.min_replicas.max(1),
            max_replicas: self.max_replicas,
            behavior: Behavior {
                scale_up: rules(
                    self.scale_up_stabilization_s,
                    self.scale_up_select,
                    &self.scale_up_policies,
                    self.scale_up_tolerance.unwrap_or(self.hpa_tolerance),
                ),
                scale_down: rules(
                    self.scale_down_stabilization_s,
                    self.scale_down_select,
                    &self.scale_down_policies,
                    self.scale_down_tolerance.unwrap_or(self.hpa_tolerance),
                ),
            },
        };
        spec.validate()?;
        Ok(spec)
    }

    pub fn sync_period(&self) -> Duration {
        Duration::from_millis(self.sync_period_ms)
    }

    pub fn scaler_timeout(&self) -> Duration {
        Duration::from_millis(self.scaler_timeout_ms)
    }

    pub fn termination_grace(&self) -> Duration {
        Duration::from_millis(self.termination_grace_ms)
    }

    /// How the pods are started.
    pub fn pod_template(&self) -> crate::pods::PodTemplate {
        crate::pods::PodTemplate {
            program: self.socket_bin.clone(),
            leading_args: Vec::new(),
            shared_args: self.shared_node_args(),
            extra_args: self.node_args.clone(),
            host: self.pod_host,
            log_dir: self.log_dir.clone(),
            grace: self.termination_grace(),
            parent_death_signal: self.parent_death_signal,
        }
    }

    /// The settings every node gets (the pod template's shared part), as flags.
    pub fn shared_node_args(&self) -> Vec<String> {
        let mut args = vec![
            "--redis-url".to_owned(),
            self.redis.redis_url.clone(),
            "--key-prefix".to_owned(),
            self.redis.key_prefix.clone(),
            "--topic".to_owned(),
            self.topic.topic.clone(),
            "--partitions".to_owned(),
            self.topic.partitions.to_string(),
            "--heartbeat-interval-ms".to_owned(),
            self.heartbeat_interval_ms.to_string(),
        ];
        let optional = [
            ("--kafka-brokers", self.kafka_brokers.clone()),
            ("--token-secret", self.token_secret.clone()),
            ("--capacity", self.capacity.map(|c| c.to_string())),
        ];
        for (flag, value) in optional {
            if let Some(value) = value {
                args.extend([flag.to_owned(), value]);
            }
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use rtc_core::hpa::PolicyKind;

    #[test]
    fn every_flag_has_an_env_var() {
        assert_eq!(rtc_core::config::flags_without_env(&Config::command()), Vec::<String>::new());
    }

    #[test]
    fn defaults_are_kubernetes_defaults() {
        let c = Config::try_parse_from(["a"]).unwrap();
        let spec = c.hpa_spec().unwrap();
        assert_eq!(spec.behavior, Behavior::default());
        assert_eq!((spec.min_replicas, spec.max_replicas), (2, 50));
        assert_eq!(c.sync_period(), Duration::from_secs(15));
        assert_eq!(c.termination_grace(), Duration::from_secs(30));
        assert_eq!(c.workload, Workload::Deployment);
        assert!(c.parent_death_signal);
        assert_eq!(c.fallback_replicas, None);
    }

    #[test]
    fn behavior_flags_and_trailing_node_args() {
        let c = Config::try_parse_from([
            "a",
            "--min-replicas",
            "0",
            "--scale-down-stabilization-s",
            "0",
            "--scale-down-policies",
            "pods:1:5, percent:50:30",
            "--scale-up-select",
            "min",
            "--scale-down-tolerance",
            "0.05",
            "--parent-death-signal",
            "false",
            "--capacity",
            "500",
            "--",
            "--drain-window-ms",
            "2000",
        ])
        .unwrap();
        let spec = c.hpa_spec().unwrap();
        assert_eq!(spec.min_replicas, 1, "KEDA gives the HPA at least 1");
        assert_eq!(spec.behavior.scale_down.stabilization_window_seconds, 0);
        assert_eq!(spec.behavior.scale_down.policies.len(), 2);
        assert_eq!(spec.behavior.scale_down.policies[1].kind, PolicyKind::Percent);
        assert_eq!(spec.behavior.scale_down.tolerance, 0.05);
        assert_eq!(spec.behavior.scale_up.tolerance, 0.1);
        assert_eq!(spec.behavior.scale_up.select_policy, SelectPolicy::Min);
        assert!(!c.parent_death_signal);
        assert_eq!(c.node_args, vec!["--drain-window-ms", "2000"]);
        let shared = c.shared_node_args();
        assert!(shared.windows(2).any(|w| w == ["--capacity", "500"]), "{shared:?}");
        assert!(!shared.contains(&"--kafka-brokers".to_owned()));
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            &["a", "--scale-up-policies", "pods:4"][..],
            &["a", "--scale-up-policies", "nodes:4:15"],
            &["a", "--hpa-tolerance", "-1"],
            &["a", "--backup-cpu-target", "0"],
            &["a", "--fallback-replicas", "0"],
            &["a", "--sync-period-ms", "0"],
        ] {
            assert!(Config::try_parse_from(bad).is_err(), "{bad:?}");
        }
        let c = Config::try_parse_from(["a", "--min-replicas", "5", "--max-replicas", "3"]).unwrap();
        assert!(c.hpa_spec().is_err());
        let c = Config::try_parse_from(["a", "--scale-up-policies", "pods:0:15"]).unwrap();
        assert!(c.hpa_spec().is_err());
    }
}
