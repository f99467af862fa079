//! `load-balancer scale-report`: scaling policies judged side by side on the
//! same traffic, on a virtual clock, in one run. Seeded and deterministic.
//!
//! - [`traces`]: the traffic: built-in shapes, a CSV, or a recorded demo run.
//! - [`cluster`]: the one cluster model every policy runs (start-up delay,
//!   capacity, CPU, the real assignment engine, drops and moves).
//! - [`policies`]: rtc, the plain HPA rules and the hand-written steps.
//! - [`figures`]: what each policy is judged by.
//! - [`chart`]: the SVG of load, serving capacity and unserved users.

pub mod chart;
pub mod cluster;
pub mod figures;
pub mod policies;
pub mod traces;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;

use self::cluster::{Cluster, ClusterArgs};
use self::figures::Figures;
use self::policies::{HPA_TARGET, POLICIES};
use self::traces::{Scale, Shape, Trace};
use crate::assign::{BalanceArgs, BalanceKind};
use crate::scale::ScaleConfig;

/// The trace name that replays a recorded run.
pub const RECORDED: &str = "recorded";

#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// Traces to run: a built-in name (diurnal, flash-crowd, sawtooth,
    /// slow-ramp, idle-drop), `recorded`, or a CSV file of
    /// `seconds,users,msgs_per_s`. Repeatable or comma-separated. Default:
    /// the built-in ones, and `recorded` when its file exists.
    #[arg(long = "trace", env = "RTC_REPORT_TRACE", value_delimiter = ',')]
    pub traces: Vec<String>,
    /// The load generator timeline `recorded` replays.
    #[arg(long, env = "RTC_REPORT_RECORDED", default_value = "target/demo/loadgen-timeline.jsonl")]
    pub recorded: PathBuf,
    /// Users at a built-in shape's base level (its trough or start).
    #[arg(long, env = "RTC_REPORT_BASE_USERS", default_value_t = 1000.0)]
    pub base_users: f64,
    /// Messages per second each user's traffic adds (built-in shapes).
    #[arg(long, env = "RTC_REPORT_MSGS_PER_USER", default_value_t = 0.2)]
    pub msgs_per_user: f64,
    /// Seed of the built-in shapes' noise.
    #[arg(long, env = "RTC_REPORT_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Fewest and most nodes, for every policy.
    #[arg(long, env = "RTC_REPORT_MIN_REPLICAS", default_value_t = 2)]
    pub min_replicas: u32,
    #[arg(long, env = "RTC_REPORT_MAX_REPLICAS", default_value_t = 50)]
    pub max_replicas: u32,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Print JSON instead of tables.
    #[arg(long, env = "RTC_REPORT_JSON")]
    pub json: bool,
    /// Write an SVG chart here: one panel per trace.
    #[arg(long, env = "RTC_REPORT_CHART")]
    pub chart: Option<PathBuf>,
}

/// `--json`: figures per trace and policy.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub traces: BTreeMap<String, TraceReport>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TraceReport {
    pub policies: BTreeMap<String, Figures>,
    /// rtc's node-hours with the assignment balancing partition counts and
    /// users, and what balancing users saves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balance: Option<Saving>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Saving {
    pub count_balance_node_hours: f64,
    pub load_balance_node_hours: f64,
    pub node_hours_saved: f64,
}

/// One trace's run, with the series the chart draws.
pub struct Run {
    pub trace: Trace,
    /// Per policy, in [`POLICIES`] order: figures, serving capacity and
    /// unserved users per second.
    pub policies: Vec<(&'static str, Figures, Vec<f64>, Vec<f64>)>,
    pub load_balance: Option<Saving>,
}

impl ReportArgs {
    fn scale_config(&self) -> anyhow::Result<ScaleConfig> {
        let config =
            ScaleConfig { min_replicas: self.min_replicas, max_replicas: self.max_replicas, ..ScaleConfig::default() };
        config.validate().map_err(anyhow::Error::msg)?;
        Ok(config)
    }

    fn load_traces(&self) -> anyhow::Result<Vec<Trace>> {
        let scale = Scale { base_users: self.base_users, msgs_per_user: self.msgs_per_user, seed: self.seed };
        let mut names = self.traces.clone();
        if names.is_empty() {
            names = Shape::ALL.iter().map(|s| s.name().to_owned()).collect();
            if self.recorded.exists() {
                names.push(RECORDED.into());
            }
        }
        names
            .iter()
            .map(|name| {
                if let Some(shape) = Shape::from_name(name) {
                    return Ok(shape.trace(&scale));
                }
                let (path, recorded) =
                    if name == RECORDED { (&self.recorded, true) } else { (&PathBuf::from(name), false) };
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!("trace {name:?}: not a built-in name, and {} cannot be read", path.display())
                })?;
                let trace = if recorded { Trace::from_timeline(RECORDED, &text) } else { Trace::from_csv(name, &text) };
                trace.with_context(|| format!("trace {name:?} ({})", path.display()))
            })
            .collect()
    }
}

/// Runs every policy over every trace.
pub fn run(args: &ReportArgs) -> anyhow::Result<Vec<Run>> {
    let config = args.scale_config()?;
    let weights = args.cluster.partition_weights();
    args.load_traces()?
        .into_iter()
        .map(|trace| {
            let policies: Vec<_> = POLICIES
                .iter()
                .map(|&name| {
                    let tally = simulate(&trace, name, &config, &args.cluster, &weights);
                    (name, tally.figures, tally.ready_capacity, tally.unserved)
                })
                .collect();
            // rtc on the other balance too: what weighing partitions saves.
            let rtc = policies.iter().find(|p| p.0 == "rtc").map_or(0.0, |p| p.1.node_hours);
            let rtc_with = |balance| {
                let cluster = ClusterArgs {
                    balance: BalanceArgs { balance, ..args.cluster.balance.clone() },
                    ..args.cluster.clone()
                };
                simulate(&trace, "rtc", &config, &cluster, &weights).figures.node_hours
            };
            let (count, load) = match args.cluster.balance.balance {
                BalanceKind::Count => (rtc, rtc_with(BalanceKind::Load)),
                BalanceKind::Load => (rtc_with(BalanceKind::Count), rtc),
            };
            let load_balance = Some(Saving {
                count_balance_node_hours: count,
                load_balance_node_hours: load,
                node_hours_saved: count - load,
            });
            Ok(Run { trace, policies, load_balance })
        })
        .collect()
}

/// One policy on one trace. Every policy starts with the nodes the first
/// second's users need at the HPA target, ready.
pub fn simulate(
    trace: &Trace,
    policy: &str,
    config: &ScaleConfig,
    cluster: &ClusterArgs,
    weights: &[f64],
) -> figures::Tally {
    let mut policy = policies::by_name(policy, config, cluster).expect("a name from POLICIES");
    let first = trace.samples.first().map_or(0.0, |s| s.users);
    let initial = ((first / (HPA_TARGET * cluster.capacity as f64)).ceil() as u32)
        .clamp(config.min_replicas, config.max_replicas);
    let mut model = Cluster::new(cluster, weights, initial);
    for (second, sample) in trace.samples.iter().enumerate() {
        let now_ms = second as u64 * 1000;
        let view = model.step(now_ms, *sample);
        let command = policy.observe(&view);
        model.apply(now_ms, command);
    }
    model.tally
}

pub fn report(runs: &[Run]) -> Report {
    let traces = runs
        .iter()
        .map(|run| {
            let policies = run.policies.iter().map(|(name, f, _, _)| ((*name).to_owned(), f.clone())).collect();
            (run.trace.name.clone(), TraceReport { policies, load_balance: run.load_balance })
        })
        .collect();
    Report { traces }
}

/// A table per trace, policies in [`POLICIES`] order.
pub fn render_table(runs: &[Run]) -> String {
    let mut out = String::new();
    for run in runs {
        let peak = run.trace.samples.iter().map(|s| s.users).fold(0.0, f64::max);
        let _ = writeln!(out, "trace {} ({} s, peak {peak:.0} users)", run.trace.name, run.trace.samples.len());
        let _ = writeln!(
            out,
            "  {:<16} {:>12} {:>8} {:>9} {:>8} {:>7} {:>5} {:>8} {:>8} {:>7}",
            "policy", "unserved u·s", "peak", "overload", "node-h", "actions", "flaps", "moved", "dropped", "surge s"
        );
        for (name, f, _, _) in &run.policies {
            let _ = writeln!(
                out,
                "  {:<16} {:>12.0} {:>8.0} {:>8}s {:>8.2} {:>7} {:>5} {:>8.0} {:>8.0} {:>7}",
                name,
                f.unserved_user_seconds,
                f.peak_unserved,
                f.overload_seconds,
                f.node_hours,
                f.scale_actions,
                f.flaps,
                f.users_moved,
                f.users_dropped,
                f.surge_to_capacity_s
            );
        }
        if let Some(saving) = run.load_balance {
            let _ = writeln!(
                out,
                "  rtc node-h balancing partition counts {:.2}, users {:.2}: saved {:.2}",
                saving.count_balance_node_hours, saving.load_balance_node_hours, saving.node_hours_saved
            );
        }
        out.push('\n');
    }
    out
}
