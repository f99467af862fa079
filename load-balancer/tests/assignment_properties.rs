//! Property tests of the assignment engine over random node sets and random
//! sequences of joins, removals, drains and readiness changes.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use rtc_core::{Assignment, NodeState};
use rtc_load_balancer::assign::{LiveNode, Placement, assign};

#[derive(Debug, Clone)]
enum Change {
    Join(u8, NodeState),
    Leave(u8),
    SetState(u8, NodeState),
}

fn state() -> impl Strategy<Value = NodeState> {
    prop_oneof![
        6 => Just(NodeState::Ready),
        1 => Just(NodeState::Starting),
        1 => Just(NodeState::Draining),
    ]
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (0u8..24, state()).prop_map(|(n, s)| Change::Join(n, s)),
        (0u8..24).prop_map(Change::Leave),
        (0u8..24, state()).prop_map(|(n, s)| Change::SetState(n, s)),
    ]
}

fn live(nodes: &BTreeMap<u8, NodeState>) -> Vec<LiveNode> {
    nodes.iter().map(|(n, s)| LiveNode::new(format!("socket-{n}"), format!("ws://10.0.0.{n}:8080/ws"), *s)).collect()
}

fn owner_ids(partitions: u32, a: Option<&Assignment>) -> Vec<Option<String>> {
    (0..partitions).map(|p| a.and_then(|a| a.owner(p)).map(|n| n.id.clone())).collect()
}

/// Checks one recompute against the assignment it replaced.
fn check_step(
    partitions: u32,
    nodes: &BTreeMap<u8, NodeState>,
    previous: Option<&Assignment>,
    connections: &[u64],
    placement: &Placement,
) -> Result<(), TestCaseError> {
    let ready: Vec<String> =
        nodes.iter().filter(|(_, s)| **s == NodeState::Ready).map(|(n, _)| format!("socket-{n}")).collect();
    let new_ids: Vec<Option<String>> = (0..partitions).map(|p| placement.owner_id(p).map(str::to_owned)).collect();
    let old_ids = owner_ids(partitions, previous);

    // Every partition has exactly one owner, and it is ready; none without
    // a ready node.
    for id in &new_ids {
        match id {
            Some(id) => prop_assert!(ready.contains(id), "owner {id} is not ready"),
            None => prop_assert!(ready.is_empty(), "unowned partition with ready nodes {ready:?}"),
        }
    }
    prop_assert_eq!(placement.nodes.len(), nodes.len());

    // The count of moved partitions is what the engine reports.
    let changed = new_ids.iter().zip(&old_ids).filter(|(a, b)| a != b).count() as u32;
    prop_assert_eq!(placement.moved, changed);
    if ready.is_empty() {
        return Ok(());
    }

    // Balance: partitions per ready node differ by at most one.
    let mut per_node: HashMap<&str, u32> = ready.iter().map(|id| (id.as_str(), 0)).collect();
    for id in new_ids.iter().flatten() {
        *per_node.get_mut(id.as_str()).unwrap() += 1;
    }
    let (min, max) = (per_node.values().min().unwrap(), per_node.values().max().unwrap());
    prop_assert!(max - min <= 1, "unbalanced: {per_node:?}");

    // Minimal movement. In any balanced assignment `extra = P % n` nodes
    // own `base + 1` and the rest `base`; a node holding `c` partitions now
    // keeps at most `min(c, quota)`. So at most
    // `Σ min(c, base) + min(extra, #{c > base})` stay, and the rest must move.
    let n = ready.len() as u32;
    let (base, extra) = (partitions / n, partitions % n);
    let held: Vec<u32> =
        ready.iter().map(|id| old_ids.iter().filter(|o| o.as_deref() == Some(id.as_str())).count() as u32).collect();
    let kept_max: u32 =
        held.iter().map(|c| (*c).min(base)).sum::<u32>() + extra.min(held.iter().filter(|c| **c > base).count() as u32);
    prop_assert_eq!(changed, partitions - kept_max, "held {:?}", held);

    // A node that sheds partitions sheds those with the fewest users.
    for id in &ready {
        let was_here = |p: &usize| old_ids[*p].as_deref() == Some(id.as_str());
        let kept: Vec<u64> = (0..partitions as usize)
            .filter(|p| was_here(p) && new_ids[*p].as_deref() == Some(id.as_str()))
            .map(|p| connections[p])
            .collect();
        let shed: Vec<u64> = (0..partitions as usize)
            .filter(|p| was_here(p) && new_ids[*p].as_deref() != Some(id.as_str()))
            .map(|p| connections[p])
            .collect();
        if let (Some(most_shed), Some(least_kept)) = (shed.iter().max(), kept.iter().min()) {
            prop_assert!(most_shed <= least_kept, "{id} shed {shed:?} but kept {kept:?}");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn assignment_invariants_hold_through_membership_changes(
        partitions in 1u32..=400,
        initial in proptest::collection::btree_map(0u8..24, state(), 0..12),
        changes in proptest::collection::vec(change(), 0..8),
        connections in proptest::collection::vec(0u64..40, 400),
    ) {
        let connections = &connections[..partitions as usize];
        let mut nodes = initial;
        let mut previous: Option<Assignment> = None;
        for (epoch, change) in std::iter::once(None).chain(changes.into_iter().map(Some)).enumerate() {
            match change {
                None => {}
                Some(Change::Join(n, s)) => { nodes.insert(n, s); }
                Some(Change::Leave(n)) => { nodes.remove(&n); }
                Some(Change::SetState(n, s)) => { if let Some(x) = nodes.get_mut(&n) { *x = s; } }
            }
            let mut shuffled = live(&nodes);
            let placement = assign(previous.as_ref(), &shuffled, partitions, connections);
            check_step(partitions, &nodes, previous.as_ref(), connections, &placement)?;

            // Deterministic: same inputs in another order, same output.
            shuffled.reverse();
            prop_assert_eq!(&assign(previous.as_ref(), &shuffled, partitions, connections), &placement);

            previous = Some(placement.into_assignment(epoch as u64 + 1, 1));
        }
    }

    #[test]
    fn recomputing_with_nothing_changed_moves_nothing(
        partitions in 1u32..=2000,
        n in 1u8..40,
    ) {
        let nodes: BTreeMap<u8, NodeState> = (0..n).map(|i| (i, NodeState::Ready)).collect();
        let first = assign(None, &live(&nodes), partitions, &[]).into_assignment(1, 1);
        let again = assign(Some(&first), &live(&nodes), partitions, &[]);
        prop_assert_eq!(again.moved, 0);
        prop_assert_eq!(again.owners, first.owners);
    }
}
