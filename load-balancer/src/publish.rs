//! The leader's assignment: recomputed from the fleet on every membership
//! change, published fenced to `rtc:assignment` and announced on
//! `rtc:assignment:events`.

use redis::aio::ConnectionLike;
use rtc_core::{Assignment, Document, Keys};

use crate::assign::{LiveNode, assign};
use crate::election::{ElectionError, Lease, LeaseStore};

/// The next assignment for `live` nodes, or `None` when nothing a node or
/// client would see changes (same nodes, states, URLs and owners).
pub fn next_assignment(
    previous: Option<&Assignment>,
    live: &[LiveNode],
    partitions: u32,
    connections: &[u64],
    leader_epoch: u64,
) -> Option<(Assignment, u32)> {
    let placement = assign(previous, live, partitions, connections);
    if let Some(prev) = previous
        && prev.partitions == partitions
        && prev.nodes == placement.nodes
        && prev.owners == placement.owners
    {
        return None;
    }
    let moved = placement.moved;
    let epoch = previous.map_or(1, |p| p.epoch + 1);
    Some((placement.into_assignment(epoch, leader_epoch), moved))
}

/// Writes the assignment only while `lease` leads, and announces its epoch.
pub async fn publish(
    store: &LeaseStore,
    conn: &mut impl ConnectionLike,
    lease: &Lease,
    keys: &Keys,
    assignment: &Assignment,
) -> Result<(), ElectionError> {
    let epoch = assignment.epoch.to_string();
    store
        .fenced_set(conn, lease, &keys.assignment(), &assignment.to_json(), Some((&keys.assignment_events(), &epoch)))
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
        let (first, moved) = next_assignment(None, &live, 8, &[], 3).unwrap();
        assert_eq!((first.epoch, first.leader_epoch, moved), (1, 3, 8));
        assert_eq!(next_assignment(Some(&first), &live, 8, &[], 3), None, "nothing changed");
        // A starting node is listed (clients never see it, but its state is).
        let mut more = live.clone();
        more.push(node("c", NodeState::Starting));
        let (second, moved) = next_assignment(Some(&first), &more, 8, &[], 4).unwrap();
        assert_eq!((second.epoch, second.leader_epoch, moved), (2, 4, 0));
        more[2].state = NodeState::Ready;
        let (third, moved) = next_assignment(Some(&second), &more, 8, &[], 4).unwrap();
        assert_eq!(third.epoch, 3);
        assert!(moved > 0 && moved <= 3, "{moved}");
        third.validate().unwrap();
    }
}
