//! `load-balancer ring-report`: how well the assignment engine spreads users
//! and how many move on a membership change, side by side with a classic
//! 160-point hash ring and jump consistent hash, computed in one run.
//!
//! The engine runs twice: balancing partition counts, and balancing users
//! (`--balance load`). `--zipf S` skews the users per partition (the k-th
//! busiest partition gets users in proportion to 1/k^S), as a few crowded
//! rooms or channels do; the baselines map users, not partitions, so the
//! skew does not touch them (they give up Kafka locality instead).

use std::hint::black_box;
use tokio::time::Instant;

use clap::Args;
use rtc_core::{NodeState, partition_for_key};
use serde::Serialize;

use crate::assign::{Balance, LiveNode, Placement, assign_balanced};
use crate::baselines::{HashRing, jump_consistent_hash, jump_key};

#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("change").args(["add", "remove"])))]
pub struct ReportArgs {
    /// Socket nodes before the change.
    #[arg(long, env = "RTC_REPORT_NODES", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub nodes: u32,
    /// Partitions of the topic.
    #[arg(long, env = "RTC_REPORT_PARTITIONS", default_value_t = rtc_core::config::DEFAULT_PARTITIONS,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub partitions: u32,
    /// Synthetic users (`user-0`, `user-1`, …).
    #[arg(long, env = "RTC_REPORT_USERS", default_value_t = 1_000_000,
          value_parser = clap::value_parser!(u32).range(1..=50_000_000))]
    pub users: u32,
    /// Nodes added (`socket-N`, …).
    #[arg(long, env = "RTC_REPORT_ADD")]
    pub add: Option<u32>,
    /// Nodes removed (the highest ordinals, as a StatefulSet scales in; jump
    /// hash can only remove those).
    #[arg(long, env = "RTC_REPORT_REMOVE")]
    pub remove: Option<u32>,
    /// Users per partition: 0 hashes user ids (even); S > 0 gives the k-th
    /// busiest partition a share proportional to 1/k^S.
    #[arg(long, env = "RTC_REPORT_ZIPF", default_value_t = 0.0)]
    pub zipf: f64,
    /// The load-balancing engine's tolerance (`--balance-tolerance`).
    #[arg(long, env = "RTC_REPORT_BALANCE_TOLERANCE", default_value_t = 0.1)]
    pub balance_tolerance: f64,
    /// Print JSON instead of a table.
    #[arg(long, env = "RTC_REPORT_JSON")]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct BeforeAfter {
    pub before: f64,
    pub after: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Figures {
    /// Max/avg partitions per node (only for the engine: baselines map users
    /// directly).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition_balance: Option<BeforeAfter>,
    /// Max/avg users per node.
    pub user_balance: BeforeAfter,
    /// Users whose node changed.
    pub moved_fraction: f64,
    /// K/(N+K) on add, K/N on remove.
    pub ideal_moved_fraction: f64,
    /// Mean user → node lookup, nanoseconds.
    pub lookup_ns: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Baselines {
    pub ring_160: Figures,
    pub jump: Figures,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub nodes_before: u32,
    pub nodes_after: u32,
    pub partitions: u32,
    pub users: u32,
    pub zipf: f64,
    /// Balancing partition counts.
    pub engine: Figures,
    /// Balancing users (`--balance load`).
    pub engine_load: Figures,
    pub baselines: Baselines,
}

impl ReportArgs {
    fn nodes_after(&self) -> anyhow::Result<u32> {
        match (self.add, self.remove) {
            (Some(k), _) => Ok(self.nodes + k),
            (_, Some(k)) if k >= self.nodes => {
                anyhow::bail!("cannot remove {k} of {} nodes", self.nodes)
            }
            (_, Some(k)) => Ok(self.nodes - k),
            (None, None) => Ok(self.nodes),
        }
    }
}

pub fn run(args: &ReportArgs) -> anyhow::Result<Report> {
    let before = args.nodes;
    let after = args.nodes_after()?;
    let users: Vec<String> = (0..args.users).map(|i| format!("user-{i}")).collect();
    let ideal = if after > before {
        f64::from(after - before) / f64::from(after)
    } else {
        f64::from(before - after) / f64::from(before)
    };
    let per_partition = users_per_partition(&users, args.partitions, args.zipf);
    let load = Balance::Load { tolerance: args.balance_tolerance };
    let engine = |balance| engine_figures(&users, &per_partition, (before, after), args.partitions, ideal, balance);
    Ok(Report {
        nodes_before: before,
        nodes_after: after,
        partitions: args.partitions,
        users: args.users,
        zipf: args.zipf,
        engine: engine(Balance::Count),
        engine_load: engine(load),
        baselines: Baselines {
            ring_160: ring_figures(&users, before, after, ideal),
            jump: jump_figures(&users, before, after, ideal),
        },
    })
}

fn node_ids(n: u32) -> Vec<String> {
    (0..n).map(|i| format!("socket-{i}")).collect()
}

fn live(n: u32) -> Vec<LiveNode> {
    node_ids(n).into_iter().map(|id| LiveNode::new(id.clone(), format!("ws://{id}/ws"), NodeState::Ready)).collect()
}

/// Each partition's share of the users when the k-th busiest has a share
/// proportional to 1/k^exponent; partitions are ranked in a hashed order
/// (so the busiest are not the lowest numbers).
pub fn zipf_shares(partitions: u32, exponent: f64) -> Vec<f64> {
    let mut ranked: Vec<u32> = (0..partitions).collect();
    ranked.sort_by_key(|q| xxhash_rust::xxh3::xxh3_64(&q.to_le_bytes()));
    let raw: Vec<f64> = (1..=partitions).map(|k| f64::from(k).powf(-exponent)).collect();
    let sum: f64 = raw.iter().sum();
    let mut shares = vec![0.0; partitions as usize];
    for (q, share) in ranked.iter().zip(raw) {
        shares[*q as usize] = share / sum;
    }
    shares
}

/// Users on each partition: the users hashed as producers do, or with
/// `zipf > 0` the same total spread 1/k^zipf over partitions ranked in a
/// hashed order.
fn users_per_partition(users: &[String], partitions: u32, zipf: f64) -> Vec<u64> {
    let mut per_partition = vec![0u64; partitions as usize];
    if zipf <= 0.0 {
        for u in users {
            per_partition[partition_for_key(u.as_bytes(), partitions) as usize] += 1;
        }
        return per_partition;
    }
    for (q, share) in zipf_shares(partitions, zipf).into_iter().enumerate() {
        per_partition[q] = (users.len() as f64 * share).round() as u64;
    }
    per_partition
}

fn engine_figures(
    users: &[String],
    per_partition: &[u64],
    (before, after): (u32, u32),
    partitions: u32,
    ideal: f64,
    balance: Balance,
) -> Figures {
    // The load balancer knows the users per partition from the heartbeats:
    // counts balance moves the emptiest partitions, load balance weighs them.
    let old = assign_balanced(None, &live(before), partitions, per_partition, balance);
    let new =
        assign_balanced(Some(&old.clone().into_assignment(1, 1)), &live(after), partitions, per_partition, balance);

    let node_of = |placement: &Placement, p: u32| -> u32 {
        let index = placement.owners[p as usize].expect("every node is ready") as usize;
        placement.nodes[index].id["socket-".len()..].parse().expect("node ids are socket-<n>")
    };
    let moved: u64 =
        (0..partitions).filter(|p| node_of(&old, *p) != node_of(&new, *p)).map(|p| per_partition[p as usize]).sum();
    let users_per = |placement: &Placement, n: u32| {
        let mut per_node = vec![0u64; n as usize];
        for p in 0..partitions {
            per_node[node_of(placement, p) as usize] += per_partition[p as usize];
        }
        per_node
    };
    let partitions_per = |placement: &Placement, n: u32| {
        let mut per_node = vec![0u64; n as usize];
        for p in 0..partitions {
            per_node[node_of(placement, p) as usize] += 1;
        }
        per_node
    };
    let owners: Vec<u32> = (0..partitions).map(|p| node_of(&new, p)).collect();
    let lookup_ns = mean_ns(users, |u| owners[partition_for_key(u, partitions) as usize]);
    Figures {
        partition_balance: Some(BeforeAfter {
            before: max_over_avg(&partitions_per(&old, before)),
            after: max_over_avg(&partitions_per(&new, after)),
        }),
        user_balance: BeforeAfter {
            before: max_over_avg(&users_per(&old, before)),
            after: max_over_avg(&users_per(&new, after)),
        },
        moved_fraction: moved as f64 / per_partition.iter().sum::<u64>().max(1) as f64,
        ideal_moved_fraction: ideal,
        lookup_ns,
    }
}

fn ring_figures(users: &[String], before: u32, after: u32, ideal: f64) -> Figures {
    let old = HashRing::new(&node_ids(before), 160);
    let new = HashRing::new(&node_ids(after), 160);
    direct_figures(users, before, after, ideal, |u| old.node_for(u), |u| new.node_for(u))
}

fn jump_figures(users: &[String], before: u32, after: u32, ideal: f64) -> Figures {
    direct_figures(
        users,
        before,
        after,
        ideal,
        |u| jump_consistent_hash(jump_key(u), before),
        |u| jump_consistent_hash(jump_key(u), after),
    )
}

/// Figures for a method that maps a user straight to a node index.
fn direct_figures(
    users: &[String],
    before: u32,
    after: u32,
    ideal: f64,
    old: impl Fn(&[u8]) -> u32,
    new: impl Fn(&[u8]) -> u32,
) -> Figures {
    let (mut per_old, mut per_new) = (vec![0u64; before as usize], vec![0u64; after as usize]);
    let mut moved = 0u64;
    for u in users {
        let (a, b) = (old(u.as_bytes()), new(u.as_bytes()));
        per_old[a as usize] += 1;
        per_new[b as usize] += 1;
        moved += u64::from(a != b);
    }
    Figures {
        partition_balance: None,
        user_balance: BeforeAfter { before: max_over_avg(&per_old), after: max_over_avg(&per_new) },
        moved_fraction: moved as f64 / users.len() as f64,
        ideal_moved_fraction: ideal,
        lookup_ns: mean_ns(users, new),
    }
}

fn max_over_avg(counts: &[u64]) -> f64 {
    let total: u64 = counts.iter().sum();
    let max = counts.iter().copied().max().unwrap_or(0);
    if total == 0 { 0.0 } else { max as f64 * counts.len() as f64 / total as f64 }
}

/// Mean wall time of `lookup` over every user (keys prepared beforehand).
fn mean_ns(users: &[String], lookup: impl Fn(&[u8]) -> u32) -> f64 {
    let start = Instant::now();
    let mut acc = 0u32;
    for u in users {
        acc = acc.wrapping_add(lookup(black_box(u.as_bytes())));
    }
    black_box(acc);
    start.elapsed().as_nanos() as f64 / users.len() as f64
}

/// The report as an aligned text table.
pub fn render_table(r: &Report) -> String {
    let mut out = format!(
        "nodes {} -> {}, partitions {}, users {}, zipf {}\n{:<11} {:>17} {:>17} {:>8} {:>8} {:>10}\n",
        r.nodes_before,
        r.nodes_after,
        r.partitions,
        r.users,
        r.zipf,
        "method",
        "partitions max/avg",
        "users max/avg",
        "moved",
        "ideal",
        "lookup ns"
    );
    let rows = [
        ("engine", &r.engine),
        ("engine_load", &r.engine_load),
        ("ring_160", &r.baselines.ring_160),
        ("jump", &r.baselines.jump),
    ];
    for (name, f) in rows {
        let partitions = f.partition_balance.map_or("-".to_owned(), |b| format!("{:.4}->{:.4}", b.before, b.after));
        out += &format!(
            "{name:<11} {partitions:>17} {:>17} {:>8.4} {:>8.4} {:>10.1}\n",
            format!("{:.4}->{:.4}", f.user_balance.before, f.user_balance.after),
            f.moved_fraction,
            f.ideal_moved_fraction,
            f.lookup_ns
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(nodes: u32, users: u32, add: Option<u32>, remove: Option<u32>) -> ReportArgs {
        ReportArgs { nodes, partitions: 360, users, add, remove, zipf: 0.0, balance_tolerance: 0.1, json: true }
    }

    #[test]
    fn add_one_node_meets_the_targets() {
        let r = run(&args(10, 200_000, Some(1), None)).unwrap();
        let e = &r.engine;
        let pb = e.partition_balance.unwrap();
        assert!((pb.before - 1.0).abs() < 1e-9, "{pb:?}");
        assert!(pb.after <= 33.0 / (360.0 / 11.0) + 1e-9, "{pb:?}");
        assert!(e.user_balance.after <= 1.05, "{:?}", e.user_balance);
        assert!((e.ideal_moved_fraction - 1.0 / 11.0).abs() < 1e-12);
        assert!(e.moved_fraction > 0.0 && e.moved_fraction <= 1.05 * e.ideal_moved_fraction, "{e:?}");
        // Baselines are computed, not copied from the engine.
        assert!(r.baselines.ring_160.partition_balance.is_none());
        assert_ne!(r.baselines.ring_160.moved_fraction, e.moved_fraction);
        assert!(r.baselines.jump.moved_fraction > 0.05 && r.baselines.jump.moved_fraction < 0.13);
    }

    #[test]
    fn remove_reports_against_k_over_n() {
        let r = run(&args(10, 50_000, None, Some(2))).unwrap();
        assert_eq!(r.nodes_after, 8);
        assert!((r.engine.ideal_moved_fraction - 0.2).abs() < 1e-12);
        // Removing nodes moves exactly their users for every method that is
        // consistent: the engine moves only the removed nodes' partitions.
        assert!((r.engine.moved_fraction - 0.2).abs() < 0.03, "{:?}", r.engine);
        assert!((r.baselines.jump.moved_fraction - 0.2).abs() < 0.03);
        assert!(run(&args(3, 10, None, Some(3))).is_err());
    }

    #[test]
    fn json_has_the_documented_keys() {
        let r = run(&args(4, 1_000, Some(1), None)).unwrap();
        let v = serde_json::to_value(&r).unwrap();
        for key in ["partition_balance", "user_balance", "moved_fraction", "ideal_moved_fraction", "lookup_ns"] {
            assert!(v["engine"].get(key).is_some(), "engine.{key}");
        }
        for b in ["ring_160", "jump"] {
            assert!(v["baselines"][b].get("user_balance").is_some(), "{b}");
            assert!(v["baselines"][b].get("partition_balance").is_none(), "{b}");
        }
        assert!(render_table(&r).contains("ring_160"));
        assert!(v["engine_load"].get("user_balance").is_some());
    }

    #[test]
    fn under_skew_balancing_users_beats_balancing_counts() {
        let skewed = ReportArgs { zipf: 1.0, ..args(10, 200_000, Some(1), None) };
        let r = run(&skewed).unwrap();
        let (count, load) = (&r.engine, &r.engine_load);
        // Counts stay even, users do not; weighing partitions evens users.
        assert!(count.partition_balance.unwrap().after < 1.05, "{count:?}");
        assert!(count.user_balance.after > 1.5, "{count:?}");
        assert!(load.user_balance.after < count.user_balance.after, "{load:?}");
        // The busiest partition alone is 1/H(360) = 16 % of the users, 1.7x
        // an 11th: no placement gets under that, and this one reaches it.
        let hottest = 11.0 / (1..=360).map(|k| 1.0 / f64::from(k)).sum::<f64>();
        assert!(load.user_balance.after <= hottest * 1.01, "{load:?} vs {hottest}");
        // Without skew, balancing users changes nothing that was fine.
        let even = run(&args(10, 200_000, Some(1), None)).unwrap();
        assert!(even.engine_load.user_balance.after <= 1.1, "{:?}", even.engine_load);
        assert!(even.engine_load.moved_fraction <= 1.1 * even.engine_load.ideal_moved_fraction);
    }
}
