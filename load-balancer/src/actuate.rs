//! Kubernetes actuation for drain-first scale-in.
//!
//! Lowering the desired count lets the workload controller pick which pod
//! dies. Drain-first needs that pod to be the one we drained, so:
//!
//! - [`choose_victim`] (pure) names the pod that will go: for a StatefulSet the
//!   controller always removes the highest ordinal, so that is the victim; for
//!   a Deployment we choose the emptiest pod and then make the ReplicaSet
//!   controller agree with us.
//! - [`Actuator::mark_victim`] does the agreeing: it sets the victim's
//!   `controller.kubernetes.io/pod-deletion-cost` to the lowest value, which
//!   the ReplicaSet controller removes first on scale-in.
//!
//! The desired count itself is lowered elsewhere (through the HPA / KEDA), not
//! here. Needed RBAC: `get` on `deployments.apps` and `statefulsets.apps`,
//! `patch` on `pods`, in the workload's namespace.

use std::cmp::Reverse;
use std::fmt;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams};

/// The annotation the ReplicaSet controller reads to order pods for deletion.
pub const POD_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";
/// The lowest cost (`i32::MIN`): deleted before any pod with a default cost of 0.
pub const LOWEST_DELETION_COST: &str = "-2147483648";
/// Recorded as `fieldManager` so `managedFields` shows who set the annotation.
pub const FIELD_MANAGER: &str = "rtc-load-balancer";

/// The controller that owns the socket pods; it decides how a victim is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
}

/// The scale-in victim among `candidates` (node id = pod name, connections).
///
/// - Deployment: fewest connections, ties broken by the highest id so every
///   leader picks the same pod from the same input.
/// - StatefulSet: the highest ordinal (`<name>-<N>`, compared as a number),
///   whatever its connections: the StatefulSet controller removes that pod
///   whatever we ask, so draining any other would drain the wrong one.
///   Names without an ordinal are not StatefulSet pods and are skipped.
///
/// `None` when there is no candidate (or, for a StatefulSet, no candidate with
/// an ordinal).
pub fn choose_victim(kind: WorkloadKind, candidates: &[(String, u64)]) -> Option<String> {
    match kind {
        WorkloadKind::Deployment => {
            candidates.iter().max_by_key(|(id, connections)| (Reverse(*connections), id)).map(|(id, _)| id.clone())
        }
        WorkloadKind::StatefulSet => candidates
            .iter()
            .filter_map(|(id, _)| ordinal(id).map(|n| (n, id)))
            .max_by_key(|(n, _)| *n)
            .map(|(_, id)| id.clone()),
    }
}

/// How the ReplicaSet controller ranks a pod for deletion on scale-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeletionRank {
    /// Running (not pending).
    pub running: bool,
    pub ready: bool,
    /// Marked with [`LOWEST_DELETION_COST`].
    pub lowest_cost: bool,
    /// When it became ready (or will), and when it was created.
    pub ready_since_ms: u64,
    pub created_ms: u64,
}

/// The pod a Deployment's ReplicaSet deletes first when it scales in
/// (`ActivePodsWithRanks`): pending before running, not ready before ready,
/// then the lowest deletion cost, then ready for the shortest time, then the
/// newest. So a marked victim goes first unless a pod is still starting.
pub fn replicaset_victim<K>(pods: impl IntoIterator<Item = (K, DeletionRank)>) -> Option<K> {
    pods.into_iter()
        .min_by_key(|(_, r)| (r.running, r.ready, !r.lowest_cost, Reverse(r.ready_since_ms), Reverse(r.created_ms)))
        .map(|(key, _)| key)
}

/// The ordinal of a StatefulSet pod name `<name>-<N>`: `N` when it is all
/// digits (so `+1` or an empty suffix do not count).
fn ordinal(pod: &str) -> Option<u64> {
    let (_, suffix) = pod.rsplit_once('-')?;
    if suffix.is_empty() || !suffix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    suffix.parse().ok()
}

#[derive(Debug, thiserror::Error)]
pub enum ActuateError {
    /// 403: the service account lacks the RBAC rule; the message names it.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// 404: the object does not exist (for a victim pod: it is already gone).
    #[error("not found: {0}")]
    NotFound(String),
    /// 409 on the first attempt and again on the one retry.
    #[error("conflict: {0}")]
    Conflict(String),
    /// No usable client configuration (neither in-cluster nor a kubeconfig).
    #[error("kubernetes client configuration: {0}")]
    Config(#[source] kube::Error),
    /// Any other API or transport failure.
    #[error("kubernetes API: {0}")]
    Api(#[source] kube::Error),
}

/// One API call, named as an RBAC rule would name it, for error messages.
struct Call<'a> {
    verb: &'a str,
    /// `resource.group` as in `kubectl auth can-i` (core resources have no group).
    resource: &'a str,
    name: &'a str,
    namespace: &'a str,
}

impl fmt::Display for Call<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {:?} in namespace {:?}", self.verb, self.resource, self.name, self.namespace)
    }
}

impl Call<'_> {
    /// Sorts the statuses the caller acts on into their own variants.
    fn error(&self, err: kube::Error) -> ActuateError {
        match &err {
            kube::Error::Api(status) if status.is_forbidden() => ActuateError::Forbidden(format!(
                "{self}: the service account needs verb {:?} on {:?} ({})",
                self.verb, self.resource, status.message
            )),
            kube::Error::Api(status) if status.is_not_found() => {
                ActuateError::NotFound(format!("{self}: {}", status.message))
            }
            kube::Error::Api(status) if status.is_conflict() => {
                ActuateError::Conflict(format!("{self}: {}", status.message))
            }
            _ => ActuateError::Api(err),
        }
    }
}

/// Talks to the API server about one workload (`socket`) in one namespace.
pub struct Actuator {
    pods: Api<Pod>,
    deployments: Api<Deployment>,
    statefulsets: Api<StatefulSet>,
    namespace: String,
    workload: String,
}

impl Actuator {
    pub fn new(client: kube::Client, namespace: &str, workload: &str) -> Self {
        Self {
            pods: Api::namespaced(client.clone(), namespace),
            deployments: Api::namespaced(client.clone(), namespace),
            statefulsets: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            workload: workload.to_owned(),
        }
    }

    /// With the inferred configuration (`kube::Client::try_default`): the pod's
    /// service account in the cluster, a kubeconfig elsewhere. Without
    /// `namespace`, the client's default: the pod's own namespace in-cluster.
    pub async fn in_cluster(namespace: Option<&str>, workload: &str) -> Result<Self, ActuateError> {
        let client = kube::Client::try_default().await.map_err(ActuateError::Config)?;
        let namespace = namespace.unwrap_or(client.default_namespace()).to_owned();
        Ok(Self::new(client, &namespace, workload))
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn workload(&self) -> &str {
        &self.workload
    }

    /// Which controller owns the workload: the Deployment named `workload` if
    /// there is one, else the StatefulSet of that name. A 403 stops at once
    /// (we cannot tell what exists), naming the missing permission.
    pub async fn detect_kind(&self) -> Result<WorkloadKind, ActuateError> {
        let call = self.call("get", "deployments.apps", &self.workload);
        if self.deployments.get_opt(&self.workload).await.map_err(|e| call.error(e))?.is_some() {
            return Ok(WorkloadKind::Deployment);
        }
        let call = self.call("get", "statefulsets.apps", &self.workload);
        if self.statefulsets.get_opt(&self.workload).await.map_err(|e| call.error(e))?.is_some() {
            return Ok(WorkloadKind::StatefulSet);
        }
        Err(ActuateError::NotFound(format!(
            "neither deployments.apps nor statefulsets.apps {:?} in namespace {:?}",
            self.workload, self.namespace
        )))
    }

    /// Called before the desired count is lowered, so the controller removes
    /// `pod` and not another. Deployment: only `pod` is patched (no pod is
    /// listed or touched otherwise). StatefulSet: nothing to do, the highest
    /// ordinal goes anyway, so no request is made.
    ///
    /// A 409 is retried once (a merge patch carries no resourceVersion, so a
    /// conflict is a transient server-side race); a second one is `Conflict`.
    /// `NotFound` means the pod is already gone.
    pub async fn mark_victim(&self, kind: WorkloadKind, pod: &str) -> Result<(), ActuateError> {
        if kind == WorkloadKind::StatefulSet {
            return Ok(());
        }
        self.patch_deletion_cost(pod, serde_json::json!(LOWEST_DELETION_COST)).await
    }

    /// Removes a victim's mark once it serves again (its removal was given
    /// up): otherwise the ReplicaSet controller would delete it first on the
    /// next scale-in, drained or not. A pod already gone needs nothing.
    pub async fn clear_mark(&self, kind: WorkloadKind, pod: &str) -> Result<(), ActuateError> {
        if kind == WorkloadKind::StatefulSet {
            return Ok(());
        }
        match self.patch_deletion_cost(pod, serde_json::Value::Null).await {
            Err(ActuateError::NotFound(_)) => Ok(()),
            other => other,
        }
    }

    /// Sets (or, with `null`, removes) the pod's deletion-cost annotation,
    /// retrying a conflict once.
    async fn patch_deletion_cost(&self, pod: &str, cost: serde_json::Value) -> Result<(), ActuateError> {
        let patch = Patch::Merge(serde_json::json!({
            "metadata": { "annotations": { POD_DELETION_COST: cost } }
        }));
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PatchParams::default() };
        let call = self.call("patch", "pods", pod);
        let mut retried = false;
        loop {
            match self.pods.patch(pod, &params, &patch).await.map_err(|e| call.error(e)) {
                Ok(_) => return Ok(()),
                Err(ActuateError::Conflict(_)) if !retried => retried = true,
                Err(e) => return Err(e),
            }
        }
    }

    fn call<'a>(&'a self, verb: &'a str, resource: &'a str, name: &'a str) -> Call<'a> {
        Call { verb, resource, name, namespace: &self.namespace }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(list: &[(&str, u64)]) -> Vec<(String, u64)> {
        list.iter().map(|(id, c)| (id.to_string(), *c)).collect()
    }

    #[test]
    fn the_replicaset_deletes_starting_pods_then_the_marked_one_then_the_newest() {
        let pod = |ready: bool, lowest_cost: bool, created_ms: u64| DeletionRank {
            running: true,
            ready,
            lowest_cost,
            ready_since_ms: created_ms + 30_000,
            created_ms,
        };
        let old = pod(true, false, 0);
        let newer = pod(true, false, 10);
        let marked = pod(true, true, 0);
        let starting = pod(false, false, 20);
        let pending = DeletionRank { running: false, ..starting };
        assert_eq!(replicaset_victim([("old", old), ("newer", newer)]), Some("newer"));
        assert_eq!(replicaset_victim([("old", old), ("marked", marked), ("newer", newer)]), Some("marked"));
        assert_eq!(replicaset_victim([("marked", marked), ("starting", starting)]), Some("starting"));
        assert_eq!(replicaset_victim([("starting", starting), ("pending", pending)]), Some("pending"));
        assert_eq!(replicaset_victim(Vec::<(&str, DeletionRank)>::new()), None);
    }

    #[test]
    fn empty_candidates_have_no_victim() {
        assert_eq!(choose_victim(WorkloadKind::Deployment, &[]), None);
        assert_eq!(choose_victim(WorkloadKind::StatefulSet, &[]), None);
    }

    #[test]
    fn deployment_victim_has_the_fewest_connections() {
        let c = nodes(&[("socket-a", 40), ("socket-b", 3), ("socket-c", 17)]);
        assert_eq!(choose_victim(WorkloadKind::Deployment, &c).as_deref(), Some("socket-b"));
    }

    #[test]
    fn deployment_ties_go_to_the_highest_id_whatever_the_order() {
        let c = nodes(&[("socket-b", 5), ("socket-c", 5), ("socket-a", 5), ("socket-d", 9)]);
        assert_eq!(choose_victim(WorkloadKind::Deployment, &c).as_deref(), Some("socket-c"));
        let mut reversed = c.clone();
        reversed.reverse();
        assert_eq!(choose_victim(WorkloadKind::Deployment, &reversed).as_deref(), Some("socket-c"));
    }

    #[test]
    fn statefulset_victim_is_the_highest_ordinal_numerically_ignoring_connections() {
        // `socket-10` sorts before `socket-9` as text; the controller compares numbers.
        let c = nodes(&[("socket-9", 0), ("socket-10", 500), ("socket-2", 1)]);
        assert_eq!(choose_victim(WorkloadKind::StatefulSet, &c).as_deref(), Some("socket-10"));
    }

    #[test]
    fn statefulset_skips_names_without_an_ordinal() {
        let c = nodes(&[("socket-1", 0), ("socket-x", 0), ("socket-+7", 0), ("socket-", 0), ("socket", 0)]);
        assert_eq!(choose_victim(WorkloadKind::StatefulSet, &c).as_deref(), Some("socket-1"));
        assert_eq!(choose_victim(WorkloadKind::StatefulSet, &nodes(&[("socket-abc", 0)])), None);
    }

    #[test]
    fn ordinal_reads_only_an_all_digit_suffix() {
        assert_eq!(ordinal("socket-0"), Some(0));
        assert_eq!(ordinal("rtc-socket-12"), Some(12));
        assert_eq!(ordinal("socket-7d9f-x2"), None);
        assert_eq!(ordinal("socket-+3"), None);
        assert_eq!(ordinal("socket3"), None);
    }
}
