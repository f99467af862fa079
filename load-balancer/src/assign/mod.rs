//! The assignment engine: which ready node owns each partition.
//!
//! Pure and deterministic: the same inputs give the same output on every
//! replica, whatever order the nodes arrive in.
//!
//! The rules, in order:
//! 1. Only `ready` nodes own partitions. With none, every partition is
//!    explicitly unowned.
//! 2. Balance: with `n` ready nodes and `P` partitions every node owns
//!    `P / n` or `P / n + 1` partitions (within one of perfect).
//! 3. Stickiness: a partition stays with its previous owner unless that
//!    owner is gone, not ready, or over its bound. The `P % n` larger quotas
//!    go to the nodes that already hold the most, so the number of partitions
//!    that move is the minimum any balanced assignment needs. A node over its
//!    quota sheds the partitions with the fewest connected users.
//! 4. Placement of the partitions that must move (and first placement):
//!    consistent hashing with bounded loads. Each partition walks a hash ring
//!    of the ready nodes from its own point and goes to the first node still
//!    under its quota.
//!
//! Those rules balance partition counts ([`Balance::Count`]). With
//! [`Balance::Load`] and the users per partition known, partitions are
//! weighed by their users instead ([`by_load`]): each node's users within a
//! tolerance of the mean, with as few users moving as that takes. Counts
//! remain the fallback when no load is known.

mod by_load;

use std::cmp::Reverse;

use rtc_core::{Assignment, AssignmentNode, NodeState};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Points per node on the placement ring: enough to spread a node's share of
/// moved partitions over many neighbours.
const VNODES_PER_NODE: u64 = 64;
const PARTITION_SEED: u64 = 0x7274_635f_7061_7274; // "rtc_part"

/// A node the load balancer currently believes alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveNode {
    pub id: String,
    pub url: String,
    pub state: NodeState,
}

impl LiveNode {
    pub fn new(id: impl Into<String>, url: impl Into<String>, state: NodeState) -> Self {
        Self { id: id.into(), url: url.into(), state }
    }
}

/// The engine's output: an assignment without its epochs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Every live node, sorted by id.
    pub nodes: Vec<AssignmentNode>,
    /// `owners[p]` indexes `nodes`; `None` when no node is ready.
    pub owners: Vec<Option<u32>>,
    /// Partitions whose owner differs from the previous assignment's
    /// (gaining an owner from none counts).
    pub moved: u32,
}

impl Placement {
    /// Stamps the placement into a publishable assignment.
    pub fn into_assignment(self, epoch: u64, leader_epoch: u64) -> Assignment {
        Assignment {
            v: rtc_core::CONTRACT_VERSION,
            epoch,
            leader_epoch,
            partitions: self.owners.len() as u32,
            nodes: self.nodes,
            owners: self.owners,
        }
    }

    pub fn owner_id(&self, partition: u32) -> Option<&str> {
        let index = self.owners[partition as usize]?;
        Some(&self.nodes[index as usize].id)
    }
}

/// What the engine keeps even across nodes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Balance {
    /// Partition counts, within one of each other.
    Count,
    /// Users (from `partition_connections`): every node within
    /// `tolerance` of the mean; counts when no partition has users.
    Load { tolerance: f64 },
    /// Between load rebalances: partitions without a ready owner go to the
    /// least loaded nodes, nothing else moves.
    LoadHeld,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BalanceKind {
    Count,
    Load,
}

/// How the leader balances partitions (flags of `serve` and `scale-report`).
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct BalanceArgs {
    /// Balance partition counts, or the users on them (`load`: from the
    /// nodes' per-partition connections; counts while none are known).
    /// Counts by default: on the demo's fast ramp `load` gave new nodes many
    /// quiet partitions, which filled past capacity as users arrived.
    #[arg(long = "balance", env = "RTC_BALANCE", value_enum, default_value_t = BalanceKind::Count)]
    pub balance: BalanceKind,
    /// With `--balance load`: partitions move once a node's users are more
    /// than this fraction off the mean (and until they are within half of it).
    #[arg(long = "balance-tolerance", env = "RTC_BALANCE_TOLERANCE", default_value_t = 0.1,
          value_parser = parse_tolerance)]
    pub balance_tolerance: f64,
    /// With `--balance load`: partitions move for load at most this often
    /// (and whenever the ready nodes change), so users are not moved on
    /// every drift of a growing fleet.
    #[arg(long = "balance-interval-ms", env = "RTC_BALANCE_INTERVAL_MS", default_value_t = 30_000)]
    pub balance_interval_ms: u64,
}

impl BalanceArgs {
    pub fn balance(&self) -> Balance {
        match self.balance {
            BalanceKind::Count => Balance::Count,
            BalanceKind::Load => Balance::Load { tolerance: self.balance_tolerance },
        }
    }
}

/// When the leader may move partitions for load: whenever the ready nodes
/// change, every sixth of `--balance-interval-ms` while a node is more than
/// twice the tolerance over the mean (it may be refusing users for
/// capacity), otherwise once per interval.
#[derive(Debug, Clone, Default)]
pub struct LoadPacer {
    last_ms: Option<u64>,
    ready: Vec<String>,
}

impl LoadPacer {
    /// The balance for an assignment computed now over `live`, from
    /// `previous` and the users per partition.
    pub fn balance(
        &mut self,
        args: &BalanceArgs,
        previous: Option<&Assignment>,
        live: &[LiveNode],
        connections: &[u64],
        now_ms: u64,
    ) -> Balance {
        let Balance::Load { tolerance } = args.balance() else { return args.balance() };
        let mut ready: Vec<String> =
            live.iter().filter(|n| n.state == NodeState::Ready).map(|n| n.id.clone()).collect();
        ready.sort_unstable();
        let since = self.last_ms.map_or(u64::MAX, |at| now_ms.saturating_sub(at));
        // A crowded node waits a sixth of the interval at most: sooner would
        // chase every wobble of a fleet that is filling up.
        let crowded = || max_over_mean(previous, &ready, connections) > 1.0 + 2.0 * tolerance;
        let due = ready != self.ready
            || since >= args.balance_interval_ms
            || (since >= args.balance_interval_ms / 6 && crowded());
        if !due {
            return Balance::LoadHeld;
        }
        self.last_ms = Some(now_ms);
        self.ready = ready;
        Balance::Load { tolerance }
    }
}

/// The busiest ready node's users over the mean, as `previous` places them.
fn max_over_mean(previous: Option<&Assignment>, ready: &[String], connections: &[u64]) -> f64 {
    let Some(previous) = previous else { return 0.0 };
    let users: Vec<u64> = ready
        .iter()
        .map(|id| previous.partitions_of(id).iter().map(|q| connections.get(*q as usize).copied().unwrap_or(0)).sum())
        .collect();
    let total: u64 = users.iter().sum();
    if total == 0 {
        return 0.0;
    }
    users.iter().copied().max().unwrap_or(0) as f64 * users.len() as f64 / total as f64
}

fn parse_tolerance(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(t) if (0.01..1.0).contains(&t) => Ok(t),
        _ => Err(format!("{raw:?} is not a fraction between 0.01 and 1")),
    }
}

/// Computes the assignment of `partitions` partitions over `live` nodes,
/// balancing partition counts.
///
/// `previous` is the assignment in force (ignored if its partition count
/// differs); `connections[p]` is the number of users connected on partition
/// `p`, when known (missing entries count as zero).
pub fn assign(previous: Option<&Assignment>, live: &[LiveNode], partitions: u32, connections: &[u64]) -> Placement {
    assign_balanced(previous, live, partitions, connections, Balance::Count)
}

/// [`assign`], balancing what `balance` says.
pub fn assign_balanced(
    previous: Option<&Assignment>,
    live: &[LiveNode],
    partitions: u32,
    connections: &[u64],
    balance: Balance,
) -> Placement {
    let nodes = sorted_nodes(live);
    let p = partitions as usize;
    // `ready[r]` is the index in `nodes` of the r-th ready node, by id.
    let ready: Vec<usize> = (0..nodes.len()).filter(|i| nodes[*i].state == NodeState::Ready).collect();
    let previous = previous.filter(|a| a.partitions == partitions);
    let previous_ids: Vec<Option<&str>> =
        (0..partitions).map(|q| previous.and_then(|a| a.owner(q)).map(|n| n.id.as_str())).collect();

    let owners = if ready.is_empty() {
        vec![None; p]
    } else {
        let ready_ids: Vec<&str> = ready.iter().map(|i| nodes[*i].id.as_str()).collect();
        let held_by: Vec<Option<usize>> =
            previous_ids.iter().map(|id| id.and_then(|id| ready_ids.binary_search(&id).ok())).collect();
        let connections_of = |q: usize| connections.get(q).copied().unwrap_or(0);
        let weight: Vec<u64> = (0..p).map(connections_of).collect();
        // Load balance needs loads; with none known, counts.
        let loads_known = weight.iter().any(|w| *w > 0);
        let placed = match balance {
            Balance::Load { tolerance } if loads_known => {
                by_load::place(&held_by, ready_ids.len(), &weight, Some(tolerance), &partition_point)
            }
            Balance::LoadHeld if loads_known => {
                by_load::place(&held_by, ready_ids.len(), &weight, None, &partition_point)
            }
            _ => place(held_by, &ready_ids, &connections_of),
        };
        placed.into_iter().map(|r| Some(ready[r] as u32)).collect()
    };

    let moved = owners
        .iter()
        .zip(&previous_ids)
        .filter(|(new, old)| new.map(|i| nodes[i as usize].id.as_str()) != **old)
        .count() as u32;
    Placement { nodes, owners, moved }
}

/// Live nodes sorted by id, one entry per id (the first one given wins).
fn sorted_nodes(live: &[LiveNode]) -> Vec<AssignmentNode> {
    let mut nodes: Vec<AssignmentNode> =
        live.iter().map(|n| AssignmentNode { id: n.id.clone(), url: n.url.clone(), state: n.state }).collect();
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    nodes.dedup_by(|later, earlier| later.id == earlier.id);
    nodes
}

/// The balanced, sticky placement over ready nodes `0..n` (sorted ids).
/// `held_by[p]` is the ready node that owns `p` now, if any.
fn place(held_by: Vec<Option<usize>>, ids: &[&str], connections_of: &dyn Fn(usize) -> u64) -> Vec<usize> {
    let n = ids.len();
    let p = held_by.len();
    let base = p / n;

    let mut held: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (q, owner) in held_by.iter().enumerate() {
        if let Some(r) = owner {
            held[*r].push(q);
        }
    }

    // The larger quotas go first to the nodes holding the most, which keeps
    // the most partitions in place; ties by id. Unclaimed ones are handed out
    // during placement to whichever node the ring reaches first.
    let mut quota = vec![base; n];
    let mut spare = p % n;
    let mut by_holding: Vec<usize> = (0..n).collect();
    by_holding.sort_by_key(|r| Reverse(held[*r].len()));
    for r in by_holding {
        if spare == 0 || held[r].len() <= base {
            break;
        }
        quota[r] = base + 1;
        spare -= 1;
    }

    let mut owner = vec![usize::MAX; p];
    let mut load = vec![0usize; n];
    let mut homeless: Vec<usize> = (0..p).filter(|q| held_by[*q].is_none()).collect();
    for (r, partitions) in held.iter_mut().enumerate() {
        let excess = partitions.len().saturating_sub(quota[r]);
        if excess > 0 {
            // Shed the partitions with the fewest users; ties by the
            // partition's ring point, not its number, so no range of
            // partitions is always the first to go.
            partitions.sort_by_key(|q| (connections_of(*q), partition_point(*q)));
            homeless.extend(partitions.drain(..excess));
        }
        for q in partitions.iter() {
            owner[*q] = r;
        }
        load[r] = partitions.len();
    }

    homeless.sort_unstable();
    let ring = Ring::new(ids);
    for q in homeless {
        let r = ring
            .walk(partition_point(q))
            .find(|r| load[*r] < quota[*r] || (spare > 0 && load[*r] == base && quota[*r] == base))
            .expect("total quota equals the partition count, so some node has room");
        if load[r] == quota[r] {
            quota[r] += 1;
            spare -= 1;
        }
        owner[q] = r;
        load[r] += 1;
    }
    owner
}

fn partition_point(q: usize) -> u64 {
    xxh3_64_with_seed(&(q as u64).to_le_bytes(), PARTITION_SEED)
}

/// A consistent-hash ring of ready nodes with virtual points.
struct Ring {
    points: Vec<(u64, usize)>,
}

impl Ring {
    fn new(ids: &[&str]) -> Self {
        let mut points: Vec<(u64, usize)> = ids
            .iter()
            .enumerate()
            .flat_map(|(r, id)| (0..VNODES_PER_NODE).map(move |v| (xxh3_64_with_seed(id.as_bytes(), v), r)))
            .collect();
        points.sort_unstable();
        Self { points }
    }

    /// Nodes in ring order starting at `point`, each point once around.
    fn walk(&self, point: u64) -> impl Iterator<Item = usize> + '_ {
        let start = self.points.partition_point(|(h, _)| *h < point);
        self.points[start..].iter().chain(&self.points[..start]).map(|(_, r)| *r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(ids: &[&str], state: NodeState) -> Vec<LiveNode> {
        ids.iter().map(|id| LiveNode::new(*id, format!("ws://{id}/ws"), state)).collect()
    }

    fn ready(n: usize) -> Vec<LiveNode> {
        (0..n).map(|i| LiveNode::new(format!("socket-{i}"), format!("ws://n{i}/ws"), NodeState::Ready)).collect()
    }

    fn counts(p: &Placement) -> Vec<usize> {
        let mut c = vec![0; p.nodes.len()];
        for o in p.owners.iter().flatten() {
            c[*o as usize] += 1;
        }
        c
    }

    #[test]
    fn first_placement_is_balanced() {
        let p = assign(None, &ready(10), 360, &[]);
        assert_eq!(counts(&p), vec![36; 10]);
        assert_eq!(p.moved, 360);
        let p = assign(None, &ready(11), 360, &[]);
        let c = counts(&p);
        assert_eq!(c.iter().filter(|x| **x == 33).count(), 8);
        assert_eq!(c.iter().filter(|x| **x == 32).count(), 3);
    }

    #[test]
    fn adding_a_node_moves_only_what_it_takes() {
        let before = assign(None, &ready(10), 360, &[]).into_assignment(1, 1);
        let after = assign(Some(&before), &ready(11), 360, &[]);
        // The new node takes 32 (the 8 larger quotas stay with old nodes);
        // every moved partition moved to it.
        assert_eq!(after.moved, 32);
        for q in 0..360 {
            if after.owner_id(q) != before.owner(q).map(|n| n.id.as_str()) {
                assert_eq!(after.owner_id(q), Some("socket-10"));
            }
        }
    }

    #[test]
    fn removing_a_node_moves_only_its_partitions() {
        let before = assign(None, &ready(10), 360, &[]).into_assignment(1, 1);
        let after = assign(Some(&before), &ready(9), 360, &[]);
        assert_eq!(after.moved, 36);
        assert_eq!(counts(&after), vec![40; 9]);
        for q in 0..360 {
            let old = before.owner(q).unwrap().id.as_str();
            if old != "socket-9" {
                assert_eq!(after.owner_id(q), Some(old));
            }
        }
    }

    #[test]
    fn draining_and_starting_nodes_own_nothing() {
        let mut live = ready(3);
        live.extend(nodes(&["socket-d"], NodeState::Draining));
        live.extend(nodes(&["socket-s"], NodeState::Starting));
        let p = assign(None, &live, 30, &[]);
        assert_eq!(p.nodes.len(), 5);
        assert_eq!(counts(&p), vec![10, 10, 10, 0, 0]);
    }

    #[test]
    fn no_ready_node_is_an_explicit_unowned_state() {
        let before = assign(None, &ready(2), 8, &[]).into_assignment(1, 1);
        let p = assign(Some(&before), &nodes(&["socket-0"], NodeState::Draining), 8, &[]);
        assert_eq!(p.owners, vec![None; 8]);
        assert_eq!(p.moved, 8);
        let a = p.into_assignment(2, 1);
        assert!(a.has_unowned());
        assert_eq!(assign(None, &[], 8, &[]).owners, vec![None; 8]);
    }

    #[test]
    fn more_nodes_than_partitions() {
        let p = assign(None, &ready(7), 3, &[]);
        let c = counts(&p);
        assert_eq!(c.iter().sum::<usize>(), 3);
        assert!(c.iter().all(|x| *x <= 1));
    }

    #[test]
    fn shedding_prefers_partitions_with_fewest_users() {
        let before = assign(None, &ready(2), 4, &[]).into_assignment(1, 1);
        let s0 = before.partitions_of("socket-0");
        let s1 = before.partitions_of("socket-1");
        let mut connections = vec![100u64; 4];
        connections[s0[1] as usize] = 1;
        connections[s1[0] as usize] = 2;
        let after = assign(Some(&before), &ready(4), 4, &connections);
        assert_eq!(after.moved, 2);
        assert_ne!(after.owner_id(s0[1]), Some("socket-0"));
        assert_ne!(after.owner_id(s1[0]), Some("socket-1"));
    }

    #[test]
    fn balancing_load_weighs_partitions_and_falls_back_to_counts() {
        // 4 partitions, two of them crowded: counts put both crowded ones
        // on one node when that is where they were; load splits them.
        let before = assign(None, &ready(2), 4, &[]).into_assignment(1, 1);
        let s0 = before.partitions_of("socket-0");
        let mut connections = vec![10u64; 4];
        for q in &s0 {
            connections[*q as usize] = 500;
        }
        let load = Balance::Load { tolerance: 0.1 };
        let by_count = assign_balanced(Some(&before), &ready(2), 4, &connections, Balance::Count);
        assert_eq!(by_count.moved, 0, "counts are even already");
        let by_load = assign_balanced(Some(&before), &ready(2), 4, &connections, load);
        assert_eq!(by_load.moved, 1, "one crowded partition moves, nothing more");
        let users = |p: &Placement, node: &str| -> u64 {
            (0..4u32).filter(|q| p.owner_id(*q) == Some(node)).map(|q| connections[q as usize]).sum()
        };
        assert_eq!((users(&by_load, "socket-0"), users(&by_load, "socket-1")), (500, 520));
        // No users known: the count rules, exactly.
        assert_eq!(assign_balanced(None, &ready(3), 30, &[], load), assign(None, &ready(3), 30, &[]));
        assert_eq!(assign_balanced(None, &ready(3), 30, &[0; 30], load), assign(None, &ready(3), 30, &[]));
    }

    #[test]
    fn load_rebalances_are_paced_except_when_the_ready_nodes_change() {
        let args = BalanceArgs { balance: BalanceKind::Load, balance_tolerance: 0.1, balance_interval_ms: 30_000 };
        let load = Balance::Load { tolerance: 0.1 };
        let mut pacer = LoadPacer::default();
        let placed = assign(None, &ready(4), 8, &[]).into_assignment(1, 1);
        let even = [10u64; 8];
        let mut balance =
            |live: &[LiveNode], connections: &[u64], now| pacer.balance(&args, Some(&placed), live, connections, now);
        assert_eq!(balance(&ready(3), &even, 0), load);
        assert_eq!(balance(&ready(3), &even, 29_999), Balance::LoadHeld);
        assert_eq!(balance(&ready(4), &even, 30_500), load, "a node joined");
        assert_eq!(balance(&ready(4), &even, 31_000), Balance::LoadHeld);
        let mut draining = ready(4);
        draining[0].state = NodeState::Draining;
        assert_eq!(balance(&draining, &even, 32_000), load, "a node is drained");
        assert_eq!(balance(&draining, &even, 62_000), load, "the interval passed");
        assert_eq!(balance(&draining, &even, 63_000), Balance::LoadHeld);
        // A node 30 % over the mean (more than twice the tolerance): after a
        // sixth of the interval.
        let mut crowded = even;
        crowded[placed.partitions_of("socket-1")[0] as usize] = 22;
        assert_eq!(balance(&draining, &crowded, 66_999), Balance::LoadHeld);
        assert_eq!(balance(&draining, &crowded, 67_000), load, "one node is crowded");
        let count = BalanceArgs { balance: BalanceKind::Count, ..args };
        assert_eq!(LoadPacer::default().balance(&count, None, &ready(3), &[], 0), Balance::Count);
    }

    #[test]
    fn order_of_nodes_and_duplicates_do_not_matter() {
        let mut live = ready(6);
        let a = assign(None, &live, 100, &[]);
        live.reverse();
        live.push(live[0].clone());
        assert_eq!(assign(None, &live, 100, &[]), a);
    }

    #[test]
    fn a_different_partition_count_starts_afresh() {
        let before = assign(None, &ready(3), 12, &[]).into_assignment(1, 1);
        let after = assign(Some(&before), &ready(3), 24, &[]);
        assert_eq!(after, assign(None, &ready(3), 24, &[]));
    }
}
