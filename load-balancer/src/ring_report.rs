//! `load-balancer ring-report`: how well the assignment engine spreads users
//! and how many move on a membership change, side by side with a classic
//! 160-point hash ring and jump consistent hash, computed in one run.

use std::hint::black_box;
use tokio::time::Instant;

use clap::Args;
use rtc_core::{NodeState, partition_for_key};
use serde::Serialize;

use crate::assign::{LiveNode, Placement, assign};
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
    pub engine: Figures,
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
    Ok(Report {
        nodes_before: before,
        nodes_after: after,
        partitions: args.partitions,
        users: args.users,
        engine: engine_figures(&users, before, after, args.partitions, ideal),
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

fn engine_figures(users: &[String], before: u32, after: u32, partitions: u32, ideal: f64) -> Figures {
    let user_partition: Vec<u32> = users.iter().map(|u| partition_for_key(u.as_bytes(), partitions)).collect();
    let mut per_partition = vec![0u64; partitions as usize];
    for p in &user_partition {
        per_partition[*p as usize] += 1;
    }
    let old = assign(None, &live(before), partitions, &[]);
    // The load balancer knows the users per partition from the heartbeats;
    // the engine uses them to move the emptiest partitions.
    let new = assign(Some(&old.clone().into_assignment(1, 1)), &live(after), partitions, &per_partition);

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
        moved_fraction: moved as f64 / users.len() as f64,
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
        "nodes {} -> {}, partitions {}, users {}\n{:<10} {:>17} {:>17} {:>8} {:>8} {:>10}\n",
        r.nodes_before,
        r.nodes_after,
        r.partitions,
        r.users,
        "method",
        "partitions max/avg",
        "users max/avg",
        "moved",
        "ideal",
        "lookup ns"
    );
    for (name, f) in [("engine", &r.engine), ("ring_160", &r.baselines.ring_160), ("jump", &r.baselines.jump)] {
        let partitions = f.partition_balance.map_or("-".to_owned(), |b| format!("{:.4}->{:.4}", b.before, b.after));
        out += &format!(
            "{name:<10} {partitions:>17} {:>17} {:>8.4} {:>8.4} {:>10.1}\n",
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
        ReportArgs { nodes, partitions: 360, users, add, remove, json: true }
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
    }
}
