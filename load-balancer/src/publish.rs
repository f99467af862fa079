//! The leader's assignment: recomputed from the fleet on every membership
//! change, published fenced to `rtc:assignment` and announced on
//! `rtc:assignment:events`.

use redis::aio::ConnectionLike;
use rtc_core::{Assignment, Document, Keys};

use crate::assign::{Balance, LiveNode, assign_balanced};
use crate::election::{ElectionError, ForwardWrite, Lease, LeaseStore};

/// The next assignment for `live` nodes, or `None` when nothing a node or
/// client would see changes (same nodes, states, URLs and owners) and no
/// node has applied a newer epoch than `previous`.
///
/// Epochs only go forward: the new one is above both `previous` and
/// `applied_epoch`, the highest epoch any node reports having applied.
/// Redis may have lost the stored assignment (and a new leader may never
/// have seen it), but the nodes still remember what they applied, and they
/// ignore anything older.
pub fn next_assignment(
    previous: Option<&Assignment>,
    live: &[LiveNode],
    partitions: u32,
    connections: &[u64],
    balance: Balance,
    leader_epoch: u64,
    applied_epoch: u64,
) -> Option<(Assignment, u32)> {
    let placement = assign_balanced(previous, live, partitions, connections, balance);
    if let Some(prev) = previous
        && prev.epoch >= applied_epoch
        && prev.partitions == partitions
        && prev.nodes == placement.nodes
        && prev.owners == placement.owners
    {
        return None;
    }
    let moved = placement.moved;
    let epoch = previous.map_or(0, |p| p.epoch).max(applied_epoch).saturating_add(1);
    Some((placement.into_assignment(epoch, leader_epoch), moved))
}

/// Caps how many of `previous`'s ready nodes one epoch may drop: half of
/// them, at least one. Any more that are missing from `live` are put back
/// as `previous` listed them (the most recently seen are kept, the
/// longest silent dropped first) and dropped by later epochs, if they are
/// still missing then. Returns how many were put back.
///
/// Real crashes of many nodes at once take a few more steps; a fault that
/// makes live nodes look dead (ingestion, clocks) can no longer empty the
/// fleet in one epoch and disconnect every user.
pub fn cap_dropped(previous: Option<&Assignment>, live: &mut Vec<LiveNode>, last_seen: impl Fn(&str) -> u64) -> usize {
    let Some(previous) = previous else { return 0 };
    let ready: Vec<_> = previous.nodes.iter().filter(|n| n.state == rtc_core::NodeState::Ready).collect();
    let mut missing: Vec<_> = ready.iter().filter(|n| !live.iter().any(|l| l.id == n.id)).copied().collect();
    let cap = (ready.len() / 2).max(1);
    if missing.len() <= cap {
        return 0;
    }
    missing.sort_by_key(|n| (last_seen(&n.id), n.id.clone()));
    let kept = &missing[cap..];
    live.extend(kept.iter().map(|n| LiveNode::new(n.id.clone(), n.url.clone(), n.state)));
    live.sort_by(|a, b| a.id.cmp(&b.id));
    kept.len()
}

/// Writes the assignment only while `lease` leads and no document with the
/// same or a newer epoch is stored (see [`ForwardWrite`]), and announces its
/// epoch when written. Publishing the document already there is a cheap
/// no-op, so the leader also uses it to put back an assignment that Redis
/// lost.
pub async fn publish(
    store: &LeaseStore,
    conn: &mut impl ConnectionLike,
    lease: &Lease,
    keys: &Keys,
    assignment: &Assignment,
) -> Result<ForwardWrite, ElectionError> {
    let epoch = assignment.epoch.to_string();
    let events = keys.assignment_events();
    store
        .fenced_set_forward(
            conn,
            lease,
            &keys.assignment(),
            &assignment.to_json(),
            assignment.epoch,
            Some((&events, &epoch)),
        )
        .await
}

/// The assignment in Redis, if any and valid (followers serve it; a new
/// leader continues its epochs).
pub async fn load(conn: &mut impl ConnectionLike, keys: &Keys) -> Result<Option<Assignment>, LoadError> {
    load_document(conn, &keys.assignment()).await
}

/// A contract document stored at `key`, if any and valid.
pub async fn load_document<D: Document>(conn: &mut impl ConnectionLike, key: &str) -> Result<Option<D>, LoadError> {
    let raw: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(conn).await?;
    raw.map(|raw| D::from_json(&raw).map_err(|e| LoadError::Invalid { key: key.to_owned(), error: e })).transpose()
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("invalid document at {key}: {error}")]
    Invalid { key: String, error: rtc_core::ContractError },
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc_core::NodeState;

    fn node(id: &str, state: NodeState) -> LiveNode {
        LiveNode::new(id, format!("ws://{id}/ws"), state)
    }

    #[test]
    fn epochs_advance_only_on_visible_change() {
        let live = vec![node("a", NodeState::Ready), node("b", NodeState::Ready)];
        let (first, moved) = next_assignment(None, &live, 8, &[], Balance::Count, 3, 0).unwrap();
        assert_eq!((first.epoch, first.leader_epoch, moved), (1, 3, 8));
        assert_eq!(next_assignment(Some(&first), &live, 8, &[], Balance::Count, 3, 1), None, "nothing changed");
        // A starting node is listed (clients never see it, but its state is).
        let mut more = live.clone();
        more.push(node("c", NodeState::Starting));
        let (second, moved) = next_assignment(Some(&first), &more, 8, &[], Balance::Count, 4, 1).unwrap();
        assert_eq!((second.epoch, second.leader_epoch, moved), (2, 4, 0));
        more[2].state = NodeState::Ready;
        let (third, moved) = next_assignment(Some(&second), &more, 8, &[], Balance::Count, 4, 2).unwrap();
        assert_eq!(third.epoch, 3);
        assert!(moved > 0 && moved <= 3, "{moved}");
        third.validate().unwrap();
    }

    #[test]
    fn one_epoch_drops_at_most_half_the_ready_nodes() {
        let all: Vec<LiveNode> = (0..6).map(|i| node(&format!("n{i}"), NodeState::Ready)).collect();
        let (previous, _) = next_assignment(None, &all, 12, &[], Balance::Count, 1, 0).unwrap();
        let last_seen = |id: &str| id[1..].parse::<u64>().unwrap() * 100;
        // Every node looks dead: 3 are dropped (the longest silent), 3 kept.
        let mut live = Vec::new();
        assert_eq!(cap_dropped(Some(&previous), &mut live, last_seen), 3);
        assert_eq!(live.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), ["n3", "n4", "n5"]);
        // Within the cap, nothing is put back.
        let mut live = all[..3].to_vec();
        assert_eq!(cap_dropped(Some(&previous), &mut live, last_seen), 0);
        assert_eq!(live.len(), 3);
        // One ready node of one: it may go.
        let (alone, _) = next_assignment(None, &all[..1], 4, &[], Balance::Count, 1, 0).unwrap();
        let mut live = Vec::new();
        assert_eq!(cap_dropped(Some(&alone), &mut live, last_seen), 0);
        assert_eq!(cap_dropped(None, &mut live, last_seen), 0);
    }

    #[test]
    fn epochs_go_past_what_nodes_applied_even_without_a_previous_assignment() {
        let live = vec![node("a", NodeState::Ready)];
        // Redis lost the assignment and this leader never saw it: the nodes'
        // acknowledged epoch 41 is the floor.
        let (first, _) = next_assignment(None, &live, 4, &[], Balance::Count, 1, 41).unwrap();
        assert_eq!(first.epoch, 42);
        // Same placement, but a node applied a newer epoch than this leader
        // knows (written by a leader whose document was lost): publish anew.
        let (again, moved) = next_assignment(Some(&first), &live, 4, &[], Balance::Count, 1, 50).unwrap();
        assert_eq!((again.epoch, moved, again.owners.clone()), (51, 0, first.owners.clone()));
        assert_eq!(next_assignment(Some(&again), &live, 4, &[], Balance::Count, 1, 51), None);
    }
}
