//! Which pods go on scale-in (pure).
//!
//! - Deployment: the ReplicaSet controller ranks pods for deletion
//!   (`ActivePodsWithRanks`), and the load balancer sets the lowest
//!   `pod-deletion-cost` on the pod it drained. Here the pod the current
//!   assignment lists as `draining` stands in for that cost and goes first,
//!   then pods that never sent a `ready` heartbeat, then the newest.
//!   (The real controller ranks not-ready pods *before* the deletion cost;
//!   the load balancer only scales in when every node serves, so the order
//!   differs only in races, and there the drained victim is the right one
//!   to lose.)
//! - StatefulSet: the controller removes the highest ordinal, whatever else
//!   is true; the load balancer drains that one for the same reason.

use std::cmp::Reverse;

use crate::config::Workload;

/// A running pod that may be removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    /// Deployment: the start sequence number (higher = newer);
    /// StatefulSet: the ordinal.
    pub ordinal: u64,
    /// Sent a `ready` heartbeat since it started.
    pub ready: bool,
    /// Listed as `draining` in the current assignment.
    pub draining: bool,
}

/// A pod chosen for removal, and why it ranks first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Victim {
    pub id: String,
    pub why: &'static str,
}

/// The `count` pods to remove, in removal order.
pub fn choose(workload: Workload, candidates: &[Candidate], count: usize) -> Vec<Victim> {
    let mut ranked: Vec<&Candidate> = candidates.iter().collect();
    match workload {
        Workload::Deployment => ranked.sort_by_key(|c| (!c.draining, c.ready, Reverse(c.ordinal))),
        Workload::Statefulset => ranked.sort_by_key(|c| Reverse(c.ordinal)),
    }
    ranked
        .into_iter()
        .take(count)
        .map(|c| Victim {
            id: c.id.clone(),
            why: match (workload, c.draining, c.ready) {
                (Workload::Statefulset, true, _) => "highest ordinal (statefulset), drained by the load balancer",
                (Workload::Statefulset, false, _) => "highest ordinal (statefulset)",
                (Workload::Deployment, true, _) => "draining in the assignment (the load balancer's drained victim)",
                (Workload::Deployment, false, false) => "not ready",
                (Workload::Deployment, false, true) => "newest",
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ordinal: u64, ready: bool, draining: bool) -> Candidate {
        Candidate { id: format!("socket-{ordinal}"), ordinal, ready, draining }
    }

    fn ids(v: &[Victim]) -> Vec<&str> {
        v.iter().map(|v| v.id.as_str()).collect()
    }

    #[test]
    fn deployment_removes_the_drained_victim_first_even_if_oldest() {
        let pods = [pod(0, true, true), pod(1, true, false), pod(2, true, false)];
        let v = choose(Workload::Deployment, &pods, 1);
        assert_eq!(ids(&v), ["socket-0"]);
        assert!(v[0].why.contains("draining"));
    }

    #[test]
    fn deployment_then_not_ready_then_newest() {
        let pods =
            [pod(0, true, false), pod(1, false, false), pod(2, true, false), pod(3, true, true), pod(4, true, false)];
        let v = choose(Workload::Deployment, &pods, 5);
        assert_eq!(ids(&v), ["socket-3", "socket-1", "socket-4", "socket-2", "socket-0"]);
        assert_eq!(v[1].why, "not ready");
        assert_eq!(v[2].why, "newest");
        // Newest compares the sequence number, not the name.
        let pods = [pod(9, true, false), pod(10, true, false)];
        assert_eq!(ids(&choose(Workload::Deployment, &pods, 1)), ["socket-10"]);
    }

    #[test]
    fn statefulset_removes_the_highest_ordinal_whatever_else() {
        let pods = [pod(0, true, true), pod(1, false, false), pod(2, true, false), pod(10, true, false)];
        let v = choose(Workload::Statefulset, &pods, 2);
        assert_eq!(ids(&v), ["socket-10", "socket-2"]);
        assert_eq!(v[0].why, "highest ordinal (statefulset)");
    }

    #[test]
    fn never_more_than_there_are() {
        assert!(choose(Workload::Deployment, &[], 3).is_empty());
        assert_eq!(choose(Workload::Statefulset, &[pod(0, true, false)], 3).len(), 1);
    }
}
