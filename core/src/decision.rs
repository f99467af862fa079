//! Decision JSON, version 1: the leader's scale decision, written fenced to
//! `rtc:scale:decision` every tick and served to KEDA by the scaler.

use serde::{Deserialize, Serialize};

use crate::ContractError;
use crate::wire::Document;

/// Longest reason kept in a decision.
pub const MAX_REASON_LEN: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    ScaleOut,
    ScaleIn,
    Hold,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ScaleOut => "scale_out",
            Self::ScaleIn => "scale_in",
            Self::Hold => "hold",
        }
    }
}

/// How pressing a scale-out is; ordered from calm to critical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Urgency {
    None,
    Moderate,
    High,
    Critical,
}

impl Urgency {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Moderate => "moderate",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub v: u32,
    pub desired_replicas: u32,
    pub current_replicas: u32,
    pub action: Action,
    /// Size of the change in replicas (0 for `hold`).
    pub step: u32,
    pub urgency: Urgency,
    pub reason: String,
    pub decided_at_ms: u64,
    pub leader_epoch: u64,
}

impl Document for Decision {
    fn version(&self) -> u32 {
        self.v
    }

    fn validate(&self) -> Result<(), ContractError> {
        if self.reason.len() > MAX_REASON_LEN {
            return Err(ContractError::invalid("reason", format!("longer than {MAX_REASON_LEN} bytes")));
        }
        Ok(())
    }
}

impl Decision {
    /// Milliseconds since the decision was made (0 if it is from the future,
    /// as clock skew between hosts can make it look).
    pub fn age_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.decided_at_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn sample() -> Value {
        json!({"v":1,"desired_replicas":7,"current_replicas":5,"action":"scale_out","step":2,
            "urgency":"high","reason":"p95 latency 180ms over SLO 100ms","decided_at_ms":1763800000000u64,
            "leader_epoch":5})
    }

    #[test]
    fn round_trip() {
        let d = Decision::from_json(sample().to_string().as_bytes()).unwrap();
        assert_eq!(d.action, Action::ScaleOut);
        assert_eq!(d.urgency, Urgency::High);
        assert_eq!(d.desired_replicas, 7);
        assert_eq!(serde_json::from_str::<Value>(&d.to_json()).unwrap(), sample());
        assert_eq!(d.age_ms(1_763_800_000_250), 250);
        assert_eq!(d.age_ms(0), 0);
    }

    #[test]
    fn bad_decisions() {
        for (field, value) in [("action", json!("explode")), ("urgency", json!("meh")), ("desired_replicas", json!(-1))]
        {
            let mut v = sample();
            v[field] = value;
            let err = Decision::from_json(v.to_string().as_bytes()).unwrap_err();
            assert!(matches!(&err, ContractError::InvalidField { field: f, .. } if f == field), "{field}: {err:?}");
        }
        let mut v = sample();
        v["reason"] = json!("x".repeat(MAX_REASON_LEN + 1));
        assert!(Decision::from_json(v.to_string().as_bytes()).is_err());
    }

    #[test]
    fn urgency_is_ordered() {
        assert!(Urgency::None < Urgency::Moderate && Urgency::Moderate < Urgency::High);
        assert!(Urgency::High < Urgency::Critical);
    }
}
