//! Balance by load: partitions weighed by the users on them, so that a node
//! holding a few crowded partitions is not as full as one holding the same
//! number of quiet ones.
//!
//! 1. Stickiness first: every partition stays with its previous owner when
//!    that owner is ready.
//! 2. Partitions without a ready owner go, heaviest first, to the least
//!    loaded node (then the one with fewest partitions).
//! 3. When a node's load is outside `(1 ± tolerance) × mean`, partitions
//!    move from the most to the least loaded node until every node is
//!    within half the tolerance, or no move helps. A node whose only load is
//!    a partition too crowded to move leaves the balancing, and the others
//!    balance around their own mean. Each move carries about
//!    the donor's excess or the recipient's shortfall (whichever is less),
//!    so users move only from nodes above the mean to nodes below it, and
//!    about as few as balance needs; the half-tolerance margin keeps loads
//!    that drift from moving partitions back and forth.
//!
//! Partitions without users never move here; with no load known at all the
//! caller balances partition counts instead.

use std::cmp::Reverse;

/// The placement over nodes `0..n`: `held_by[q]` is the ready node owning
/// `q` now; `weight[q]` its users. Without a `tolerance` only partitions
/// without an owner are placed (nothing rebalances). Ties go to `rank(q)`
/// (a hash) so no range of partitions is always first.
pub(super) fn place(
    held_by: &[Option<usize>],
    n: usize,
    weight: &[u64],
    tolerance: Option<f64>,
    rank: &dyn Fn(usize) -> u64,
) -> Vec<usize> {
    let p = held_by.len();
    let mut owner = vec![0usize; p];
    let mut load = vec![0u64; n];
    let mut count = vec![0usize; n];
    let mut homeless = Vec::new();
    for (q, held) in held_by.iter().enumerate() {
        match held {
            Some(r) => {
                owner[q] = *r;
                load[*r] += weight[q];
                count[*r] += 1;
            }
            None => homeless.push(q),
        }
    }
    homeless.sort_by_key(|q| (Reverse(weight[*q]), rank(*q)));
    for q in homeless {
        let r = (0..n).min_by_key(|r| (load[*r], count[*r], *r)).unwrap_or(0);
        owner[q] = r;
        load[r] += weight[q];
        count[r] += 1;
    }
    if let Some(tolerance) = tolerance {
        rebalance(&mut owner, &mut load, weight, tolerance, rank);
    }
    owner
}

fn rebalance(owner: &mut [usize], load: &mut [u64], weight: &[u64], tolerance: f64, rank: &dyn Fn(usize) -> u64) {
    let n = load.len();
    // Nodes that can still give or take: a node whose partitions are all
    // too big to move (one crowded partition) leaves the balancing, and the
    // rest balance around their own mean.
    let mut active = vec![true; n];
    let mut moved = false;
    // Every move lowers the sum of squared loads, so this ends; the bound
    // only caps the work.
    for _ in 0..4 * owner.len() + n {
        let nodes: Vec<usize> = (0..n).filter(|r| active[*r]).collect();
        let total: u64 = nodes.iter().map(|r| load[*r]).sum();
        if nodes.len() < 2 || total == 0 {
            return;
        }
        let mean = total as f64 / nodes.len() as f64;
        // Outside the tolerance to start; then on to within half of it.
        let band = if moved { tolerance / 2.0 } else { tolerance };
        let (high, low) = ((1.0 + band) * mean, (1.0 - band) * mean);
        let donor = nodes.iter().copied().max_by_key(|r| (load[*r], Reverse(*r))).unwrap_or(0);
        let recipient = nodes.iter().copied().min_by_key(|r| (load[*r], *r)).unwrap_or(0);
        let gap = load[donor] - load[recipient];
        if (load[donor] as f64) <= high && (load[recipient] as f64) >= low {
            return;
        }
        // What the move should carry: the donor's excess or the recipient's
        // shortfall, whichever is less, give or take half the band. The
        // heaviest partition within that, else the lightest one that still
        // narrows the gap.
        let target = (load[donor] as f64 - mean).min(mean - load[recipient] as f64).max(0.0);
        let margin = (mean * tolerance / 2.0).max(1.0);
        let candidates = || (0..owner.len()).filter(|q| owner[*q] == donor && weight[*q] > 0 && weight[*q] < gap);
        let within = candidates()
            .filter(|q| weight[*q] as f64 <= target + margin)
            .max_by_key(|q| (weight[*q], Reverse(rank(*q))));
        let lightest = || candidates().min_by_key(|q| (weight[*q], rank(*q)));
        let Some(q) = within.or_else(lightest) else {
            active[donor] = false;
            continue;
        };
        owner[q] = recipient;
        load[donor] -= weight[q];
        load[recipient] += weight[q];
        moved = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rank(q: usize) -> u64 {
        q as u64
    }

    fn loads(owner: &[usize], weight: &[u64], n: usize) -> Vec<u64> {
        let mut load = vec![0; n];
        for (q, r) in owner.iter().enumerate() {
            load[*r] += weight[q];
        }
        load
    }

    #[test]
    fn crowded_partitions_are_spread_by_users_not_by_count() {
        // 8 partitions: two crowded (400 each), six quiet (100 each): 1400.
        let weight = [400, 400, 100, 100, 100, 100, 100, 100];
        let owner = place(&[None; 8], 2, &weight, Some(0.1), &rank);
        assert_eq!(loads(&owner, &weight, 2), [700, 700]);
        let counts: Vec<usize> = (0..2).map(|r| owner.iter().filter(|o| **o == r).count()).collect();
        assert_eq!(counts, [4, 4]);
    }

    #[test]
    fn within_the_tolerance_nothing_moves() {
        // 500 / 450 / 550: every node within 10 % of the mean 500.
        let weight = [250, 250, 225, 225, 275, 275];
        let held = [Some(0), Some(0), Some(1), Some(1), Some(2), Some(2)];
        let owner = place(&held, 3, &weight, Some(0.1), &rank);
        assert_eq!(owner, [0, 0, 1, 1, 2, 2]);
    }

    #[test]
    fn a_new_node_takes_load_with_few_users_moving() {
        // Two nodes of 600; a third joins: the mean is 400, and each old
        // node hands over about a third of its users (the lightest
        // partitions that are enough).
        let weight = [300, 200, 100, 300, 200, 100];
        let held = [Some(0), Some(0), Some(0), Some(1), Some(1), Some(1)];
        let owner = place(&held, 3, &weight, Some(0.1), &rank);
        let load = loads(&owner, &weight, 3);
        assert!(load.iter().all(|l| (380..=420).contains(l)), "{load:?}");
        let moved: u64 = (0..6).filter(|q| owner[*q] != held[*q].unwrap()).map(|q| weight[q]).sum();
        assert_eq!(moved, 400, "the minimum: the new node's fair share");
    }

    #[test]
    fn a_partition_too_big_to_split_stops_the_balancing() {
        // One partition holds most users: nothing can make it fair, and
        // nothing moves for nothing.
        let weight = [1000, 10, 10, 10];
        let held = [Some(0), Some(1), Some(1), Some(1)];
        let owner = place(&held, 2, &weight, Some(0.1), &rank);
        assert_eq!(owner, [0, 1, 1, 1]);
    }
}
