//! The leader's scale tick: run the engine, make a Deployment's scale-in
//! victim the pod Kubernetes deletes, write the decision fenced to
//! `rtc:scale:decision`, and keep the recent history for `/v1/decisions`.

use std::collections::VecDeque;
use std::sync::Mutex;

use redis::aio::ConnectionLike;
use rtc_core::{Action, Decision, Document, Keys};
use serde::Serialize;

use crate::actuate::{ActuateError, Actuator, WorkloadKind};
use crate::election::{ElectionError, Lease, LeaseStore};
use crate::fleet::Fleet;
use crate::metrics::{ActuationFailure, Metrics};
use crate::scale::{Engine, Finding, Inputs, Outcome};

/// One decision as `/v1/decisions` shows it. A follower knows only the
/// decision it read; the leader adds what it was made from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    pub decision: Decision,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<Finding>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Inputs>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<String>,
}

/// The last decisions, newest last, bounded.
pub struct History {
    capacity: usize,
    records: Mutex<VecDeque<Record>>,
}

impl History {
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), records: Mutex::new(VecDeque::new()) }
    }

    pub fn push(&self, record: Record) {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if records.back().is_some_and(|last| last.decision == record.decision) {
            return;
        }
        if records.len() == self.capacity {
            records.pop_front();
        }
        records.push_back(record);
    }

    /// Up to `limit` records, newest first.
    pub fn newest(&self, limit: usize) -> Vec<Record> {
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        records.iter().rev().take(limit).cloned().collect()
    }
}

/// How scale-ins are actuated: the socket workload's kind, and the
/// Kubernetes API when there is one (none on one machine: nothing to mark).
pub struct Actuation {
    pub kind: WorkloadKind,
    pub kube: Option<Box<Actuator>>,
}

/// One tick as the leader: decide, mark, publish, record, count.
pub async fn tick(
    engine: &mut Engine,
    fleet: &Mutex<Fleet>,
    now_ms: u64,
    actuation: &Actuation,
    publisher: (&LeaseStore, &mut impl ConnectionLike, &Lease, &Keys),
    history: &History,
    metrics: &Metrics,
) -> Result<Outcome, ElectionError> {
    let decide = |engine: &mut Engine| engine.decide(&fleet.lock().unwrap_or_else(|p| p.into_inner()), now_ms);
    let (store, conn, lease, keys) = publisher;
    let mut outcome = decide(engine);
    let patched =
        match patch_fenced((store, &mut *conn, lease), actuation, &outcome.mark, &outcome.unmark, metrics).await {
            Ok(patched) => patched,
            Err(e) => {
                // Nothing was patched: if this replica still leads, its next
                // tick starts over, with no victim left unmarked.
                engine.abandon_scale_in(now_ms);
                engine.unmark_failed(outcome.unmark);
                return Err(e);
            }
        };
    engine.unmark_failed(patched.unmark_failed);
    if let Some(e) = patched.mark_error {
        // The wrong pod could go: keep every node and try again later.
        tracing::warn!(error = %e, victims = ?outcome.mark, "scale-in victim not marked; scale-in given up");
        metrics.actuation_error(error_kind(&e));
        engine.abandon_scale_in(now_ms);
        outcome = decide(engine);
        let text = format!("scale-in given up: {e}");
        outcome.decision.reason = format!("{text}; {}", outcome.decision.reason);
        outcome.findings.insert(0, Finding { urgency: rtc_core::Urgency::None, code: "actuation_failed", text });
    }
    outcome.decision.leader_epoch = lease.epoch;
    store.fenced_set(conn, lease, &keys.scale_decision(), &outcome.decision.to_json(), None).await?;
    let d = &outcome.decision;
    let direction = match d.action {
        Action::ScaleOut => "out",
        Action::ScaleIn => "in",
        Action::Hold => "hold",
    };
    metrics.count_labels("rtc_lb_scale_signals_total", &[("direction", direction), ("reason", outcome.code)]);
    metrics.desired_replicas.set(f64::from(d.desired_replicas));
    metrics.current_replicas.set(f64::from(d.current_replicas));
    if d.action != Action::Hold {
        tracing::info!(action = d.action.as_str(), from = d.current_replicas, to = d.desired_replicas,
            urgency = d.urgency.as_str(), reason = %d.reason, "scale decision");
    }
    history.push(Record {
        decision: outcome.decision.clone(),
        code: Some(outcome.code),
        findings: outcome.findings.clone(),
        inputs: Some(outcome.inputs.clone()),
        excluded: outcome.excluded.iter().cloned().collect(),
    });
    Ok(outcome)
}

/// What [`patch_fenced`] did.
#[derive(Debug, Default)]
pub struct Patched {
    /// The first victim that could not be marked: the scale-in is given up.
    pub mark_error: Option<ActuateError>,
    /// Marks that could not be cleared: tried again next tick.
    pub unmark_failed: Vec<String>,
}

/// Clears the marks of `unmark` and marks `mark`, only while `lease` is
/// the lease in Redis with a third of its time left, checked right before
/// the patches: a leader paused past its lease (SIGSTOP, a stall) runs one
/// more tick before it learns it was deposed, and fencing by script cannot
/// cover a Kubernetes call.
pub async fn patch_fenced(
    fence: (&LeaseStore, &mut impl ConnectionLike, &Lease),
    actuation: &Actuation,
    mark: &[String],
    unmark: &[String],
    metrics: &Metrics,
) -> Result<Patched, ElectionError> {
    let Some(actuator) = actuation.kube.as_deref() else { return Ok(Patched::default()) };
    if mark.is_empty() && unmark.is_empty() {
        return Ok(Patched::default());
    }
    let (store, conn, lease) = fence;
    if !store.holds(conn, lease, store.ttl() / 3).await? {
        return Err(ElectionError::Fenced);
    }
    let unmark_failed = clear_marks(actuator, actuation.kind, unmark, metrics).await;
    let mark_error = mark_victims(actuator, actuation.kind, mark).await.err();
    Ok(Patched { mark_error, unmark_failed })
}

/// Marks every victim; a pod already gone needs no mark.
async fn mark_victims(actuator: &Actuator, kind: WorkloadKind, victims: &[String]) -> Result<(), ActuateError> {
    for victim in victims {
        match actuator.mark_victim(kind, victim).await {
            Ok(()) | Err(ActuateError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Clears the marks of victims that serve again; returns those it could not.
async fn clear_marks(actuator: &Actuator, kind: WorkloadKind, pods: &[String], metrics: &Metrics) -> Vec<String> {
    let mut failed = Vec::new();
    for pod in pods {
        match actuator.clear_mark(kind, pod).await {
            Ok(()) => tracing::info!(pod, "scale-in victim serves again: deletion-cost mark cleared"),
            Err(e) => {
                tracing::warn!(pod, error = %e, "deletion-cost mark not cleared; trying again next tick");
                metrics.actuation_error(error_kind(&e));
                failed.push(pod.clone());
            }
        }
    }
    failed
}

fn error_kind(e: &ActuateError) -> ActuationFailure {
    match e {
        ActuateError::Forbidden(_) => ActuationFailure::Forbidden,
        ActuateError::NotFound(_) => ActuationFailure::NotFound,
        ActuateError::Conflict(_) => ActuationFailure::Conflict,
        ActuateError::Config(_) => ActuationFailure::Config,
        ActuateError::Api(_) => ActuationFailure::Api,
    }
}

/// A follower's view: the decision the leader wrote, into the history.
pub fn follow(history: &History, decision: Decision, metrics: &Metrics) {
    metrics.desired_replicas.set(f64::from(decision.desired_replicas));
    metrics.current_replicas.set(f64::from(decision.current_replicas));
    history.push(Record { decision, code: None, findings: Vec::new(), inputs: None, excluded: Vec::new() });
}
