//! Heartbeat JSON, version 1: what a socket node reports every interval on
//! the `rtc:heartbeats` stream (field `hb`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ContractError;
use crate::wire::{Document, check_fraction, check_non_negative};

/// Longest advertised URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// Lifecycle of a socket node as it reports itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Up, not yet accepting users: owns no partitions.
    Starting,
    /// Accepting users: may own partitions.
    Ready,
    /// Handing its users off before it stops: owns no partitions.
    Draining,
}

impl NodeState {
    pub const ALL: [NodeState; 3] = [NodeState::Starting, NodeState::Ready, NodeState::Draining];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Ready => "ready",
            Self::Draining => "draining",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub v: u32,
    pub node_id: String,
    /// WebSocket URL clients connect to, e.g. `ws://10.0.0.7:8080/ws`.
    pub url: String,
    pub state: NodeState,
    /// Increases by one per heartbeat of one node process.
    pub seq: u64,
    pub sent_at_ms: u64,
    /// The newest assignment epoch this node has applied (hand-off ack).
    pub assignment_epoch: u64,
    pub connections: u64,
    pub capacity: u64,
    /// Fraction of the container's CPU limit.
    pub cpu: f64,
    /// Fraction of the container's memory limit.
    pub memory: f64,
    pub mps_in: f64,
    pub mps_out: f64,
    pub p95_latency_ms: f64,
    pub kafka_lag: u64,
    /// Connected users per owned partition (keys are partition numbers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_connections: Option<BTreeMap<u32, u64>>,
}

impl Document for Heartbeat {
    fn version(&self) -> u32 {
        self.v
    }

    fn validate(&self) -> Result<(), ContractError> {
        crate::ids::validate_node_id(&self.node_id)?;
        validate_ws_url(&self.url)?;
        if self.capacity == 0 {
            return Err(ContractError::invalid("capacity", "must be at least 1"));
        }
        check_fraction("cpu", self.cpu)?;
        check_fraction("memory", self.memory)?;
        check_non_negative("mps_in", self.mps_in)?;
        check_non_negative("mps_out", self.mps_out)?;
        check_non_negative("p95_latency_ms", self.p95_latency_ms)?;
        Ok(())
    }
}

impl Heartbeat {
    /// Checks that every partition named in `partition_connections` exists
    /// in a topic of `partitions` partitions (only the reader knows P).
    pub fn check_partitions(&self, partitions: u32) -> Result<(), ContractError> {
        match self.partition_connections.as_ref().and_then(|m| m.keys().find(|p| **p >= partitions)) {
            Some(p) => Err(ContractError::invalid(
                "partition_connections",
                format!("partition {p} is not below the partition count {partitions}"),
            )),
            None => Ok(()),
        }
    }
}

pub(crate) fn validate_ws_url(url: &str) -> Result<(), ContractError> {
    if url.len() > MAX_URL_LEN {
        return Err(ContractError::invalid("url", format!("longer than {MAX_URL_LEN} bytes")));
    }
    let rest = url.strip_prefix("ws://").or_else(|| url.strip_prefix("wss://"));
    match rest {
        Some(host) if !host.is_empty() && !host.chars().any(|c| c.is_whitespace() || c.is_control()) => Ok(()),
        _ => Err(ContractError::invalid("url", "must be a ws:// or wss:// URL with a host")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn sample() -> Value {
        json!({"v":1,"node_id":"socket-0","url":"ws://10.0.0.7:8080/ws","state":"ready",
            "seq":42,"sent_at_ms":1763800000000u64,"assignment_epoch":17,
            "connections":1200,"capacity":20000,"cpu":0.41,"memory":0.33,
            "mps_in":120.0,"mps_out":3900.0,"p95_latency_ms":12.0,"kafka_lag":8,
            "partition_connections":{"17":40,"18":35}})
    }

    fn parse(v: &Value) -> Result<Heartbeat, ContractError> {
        Heartbeat::from_json(v.to_string().as_bytes())
    }

    #[test]
    fn parses_the_documented_example() {
        let hb = parse(&sample()).unwrap();
        assert_eq!(hb.node_id, "socket-0");
        assert_eq!(hb.state, NodeState::Ready);
        assert_eq!(hb.capacity, 20_000);
        assert_eq!(hb.partition_connections.as_ref().unwrap()[&17], 40);
        // And writes it back to the same JSON.
        assert_eq!(serde_json::from_str::<Value>(&hb.to_json()).unwrap(), sample());
    }

    #[test]
    fn unknown_fields_are_ignored_and_partition_connections_is_optional() {
        let mut v = sample();
        v["zone"] = json!("eu-west-1a");
        v.as_object_mut().unwrap().remove("partition_connections");
        let hb = parse(&v).unwrap();
        assert_eq!(hb.partition_connections, None);
        assert!(!hb.to_json().contains("partition_connections"));
    }

    #[test]
    fn every_required_field_is_named_when_missing() {
        let required = [
            "v",
            "node_id",
            "url",
            "state",
            "seq",
            "sent_at_ms",
            "assignment_epoch",
            "connections",
            "capacity",
            "cpu",
            "memory",
            "mps_in",
            "mps_out",
            "p95_latency_ms",
            "kafka_lag",
        ];
        for field in required {
            let mut v = sample();
            v.as_object_mut().unwrap().remove(field);
            assert_eq!(parse(&v), Err(ContractError::MissingField(field.into())), "{field}");
        }
    }

    #[test]
    fn out_of_range_values_name_their_field() {
        let cases = [
            ("cpu", json!(1.5)),
            ("cpu", json!(-0.1)),
            ("memory", json!(2)),
            ("mps_in", json!(-1.0)),
            ("mps_out", json!(-3)),
            ("p95_latency_ms", json!(-0.5)),
            ("capacity", json!(0)),
            ("connections", json!(-1)),
            ("kafka_lag", json!(-8)),
            ("seq", json!("42")),
            ("state", json!("sleeping")),
            ("node_id", json!("bad id")),
            ("node_id", json!("")),
            ("url", json!("http://10.0.0.7/ws")),
            ("url", json!("ws://")),
            ("partition_connections", json!({"x": 1})),
            ("partition_connections", json!({"3": -1})),
        ];
        for (field, value) in cases {
            let mut v = sample();
            v[field] = value.clone();
            match parse(&v) {
                Err(ContractError::InvalidField { field: got, .. }) => {
                    assert!(got.starts_with(field), "{field}={value}: error names {got}")
                }
                other => panic!("{field}={value}: expected InvalidField, got {other:?}"),
            }
        }
    }

    #[test]
    fn other_versions_are_refused() {
        let mut v = sample();
        v["v"] = json!(2);
        assert_eq!(parse(&v), Err(ContractError::UnsupportedVersion(2)));
    }

    #[test]
    fn oversized_and_malformed_documents() {
        let mut v = sample();
        v["padding"] = json!("x".repeat(crate::MAX_DOCUMENT_BYTES));
        assert!(matches!(parse(&v), Err(ContractError::TooLarge { .. })));
        for bad in ["{not json", "{\"v\":1,}"] {
            assert!(matches!(Heartbeat::from_json(bad.as_bytes()), Err(ContractError::Json(_))), "{bad}");
        }
        for bad in ["", "{", "[]", "null", "{\"v\":1,}"] {
            let err = Heartbeat::from_json(bad.as_bytes()).unwrap_err();
            assert!(matches!(err, ContractError::Json(_) | ContractError::InvalidField { .. }), "{bad}: {err:?}");
        }
    }

    #[test]
    fn partitions_are_checked_against_the_topic() {
        let hb = parse(&sample()).unwrap();
        assert_eq!(hb.check_partitions(360), Ok(()));
        assert!(hb.check_partitions(18).is_err());
        assert_eq!(hb.check_partitions(19), Ok(()));
    }
}
