//! Assignment JSON, version 1: which node owns each partition, written by
//! the leader to `rtc:assignment`.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::wire::Document;
use crate::{ContractError, NodeState};

/// Assignments grow with the partition count: 10 000 partitions and 200 nodes
/// is about 80 KiB. Allow ample room, still bounded.
pub const MAX_ASSIGNMENT_BYTES: usize = 8 * 1024 * 1024;

/// A node as the assignment lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentNode {
    pub id: String,
    pub url: String,
    pub state: NodeState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub v: u32,
    /// Strictly increasing; readers apply only newer epochs.
    pub epoch: u64,
    /// Fencing epoch of the leader that wrote it.
    pub leader_epoch: u64,
    pub partitions: u32,
    /// Live nodes, sorted by id.
    pub nodes: Vec<AssignmentNode>,
    /// `owners[p]` indexes `nodes`; `null` while no ready node exists.
    pub owners: Vec<Option<u32>>,
}

impl Document for Assignment {
    const MAX_BYTES: usize = MAX_ASSIGNMENT_BYTES;

    fn version(&self) -> u32 {
        self.v
    }

    fn validate(&self) -> Result<(), ContractError> {
        if self.partitions == 0 {
            return Err(ContractError::invalid("partitions", "must be at least 1"));
        }
        if self.owners.len() != self.partitions as usize {
            return Err(ContractError::invalid(
                "owners",
                format!("has {} entries for {} partitions", self.owners.len(), self.partitions),
            ));
        }
        let mut seen = HashSet::with_capacity(self.nodes.len());
        for node in &self.nodes {
            crate::ids::validate_node_id(&node.id)?;
            crate::heartbeat::validate_ws_url(&node.url)?;
            if !seen.insert(node.id.as_str()) {
                return Err(ContractError::invalid("nodes", format!("node {} is listed twice", node.id)));
            }
        }
        for (p, owner) in self.owners.iter().enumerate() {
            let Some(i) = owner else { continue };
            match self.nodes.get(*i as usize) {
                None => {
                    return Err(ContractError::invalid(format!("owners[{p}]").as_str(), format!("no node {i}")));
                }
                Some(n) if n.state != NodeState::Ready => {
                    return Err(ContractError::invalid(
                        format!("owners[{p}]").as_str(),
                        format!("node {} is {}, only ready nodes own partitions", n.id, n.state.as_str()),
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

impl Assignment {
    /// The node that owns `partition`, if any.
    pub fn owner(&self, partition: u32) -> Option<&AssignmentNode> {
        let index = (*self.owners.get(partition as usize)?)?;
        self.nodes.get(index as usize)
    }

    /// The partitions `node_id` owns, ascending.
    pub fn partitions_of(&self, node_id: &str) -> Vec<u32> {
        let Some(index) = self.nodes.iter().position(|n| n.id == node_id) else {
            return Vec::new();
        };
        (0..self.partitions).filter(|p| self.owners[*p as usize] == Some(index as u32)).collect()
    }

    /// True while at least one partition has no owner.
    pub fn has_unowned(&self) -> bool {
        self.owners.iter().any(Option::is_none)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn sample() -> Value {
        json!({"v":1,"epoch":17,"leader_epoch":5,"partitions":4,
            "nodes":[{"id":"socket-0","url":"ws://a/ws","state":"ready"},
                     {"id":"socket-1","url":"ws://b/ws","state":"ready"},
                     {"id":"socket-2","url":"ws://c/ws","state":"draining"}],
            "owners":[0,0,1,null]})
    }

    fn parse(v: &Value) -> Result<Assignment, ContractError> {
        Assignment::from_json(v.to_string().as_bytes())
    }

    #[test]
    fn round_trip_and_lookups() {
        let a = parse(&sample()).unwrap();
        assert_eq!(a.owner(0).unwrap().id, "socket-0");
        assert_eq!(a.owner(2).unwrap().id, "socket-1");
        assert_eq!(a.owner(3), None);
        assert_eq!(a.owner(4), None);
        assert_eq!(a.partitions_of("socket-0"), vec![0, 1]);
        assert_eq!(a.partitions_of("socket-2"), Vec::<u32>::new());
        assert_eq!(a.partitions_of("nobody"), Vec::<u32>::new());
        assert!(a.has_unowned());
        assert_eq!(serde_json::from_str::<Value>(&a.to_json()).unwrap(), sample());
    }

    #[test]
    fn inconsistent_assignments_are_refused() {
        let cases = [
            ("owners", json!([0, 0, 1])),
            ("owners[1]", json!([0, 7, 1, null])),
            ("owners[0]", json!([2, 0, 1, null])),
            ("partitions", json!(0)),
        ];
        for (field, value) in cases {
            let mut v = sample();
            let key = field.split('[').next().unwrap();
            v[key] = value;
            if field == "partitions" {
                v["owners"] = json!([]);
            }
            match parse(&v) {
                Err(ContractError::InvalidField { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        let mut v = sample();
        v["nodes"][1]["id"] = json!("socket-0");
        assert!(matches!(parse(&v), Err(ContractError::InvalidField { field, .. }) if field == "nodes"));
        let mut v = sample();
        v.as_object_mut().unwrap().remove("leader_epoch");
        assert_eq!(parse(&v), Err(ContractError::MissingField("leader_epoch".into())));
        let mut v = sample();
        v["nodes"][0].as_object_mut().unwrap().remove("url");
        assert_eq!(parse(&v), Err(ContractError::MissingField("nodes[0].url".into())));
    }
}
