//! The custom resources `deploy/k8s` uses, as typed structs that reject
//! unknown fields: `kubernetes-validate` skips CRD kinds, so a misspelt field
//! of a ScaledObject or PrometheusRule would otherwise only show on a real
//! cluster (or, worse, be dropped by the API server without a word).
//!
//! The fields are those of the CRDs' published schemas (KEDA 2.20,
//! prometheus-operator monitoring.coreos.com/v1, Strimzi kafka.strimzi.io/v1beta2)
//! that rtc uses or that a user is likely to add. Free-form subtrees (a
//! trigger's metadata, Kafka broker config, Strimzi pod templates) stay maps.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// Object metadata as written in a manifest.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    pub name: String,
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// `apiVersion`, `kind`, `metadata`, `spec`: every CRD object here.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Object<S> {
    pub api_version: String,
    pub kind: String,
    pub metadata: Meta,
    pub spec: S,
}

// ---------------------------------------------------------------- KEDA

pub type ScaledObject = Object<ScaledObjectSpec>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ScaledObjectSpec {
    pub scale_target_ref: ScaleTargetRef,
    pub polling_interval: Option<u32>,
    pub cooldown_period: Option<u32>,
    pub initial_cooldown_period: Option<u32>,
    pub idle_replica_count: Option<u32>,
    pub min_replica_count: Option<u32>,
    pub max_replica_count: Option<u32>,
    pub fallback: Option<Fallback>,
    pub advanced: Option<Advanced>,
    pub triggers: Vec<Trigger>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ScaleTargetRef {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    pub env_source_container_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Fallback {
    pub failure_threshold: u32,
    pub replicas: u32,
    /// `static`, `currentReplicas`, `currentReplicasIfHigher`, `currentReplicasIfLower`.
    pub behavior: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Advanced {
    pub restore_to_original_replica_count: Option<bool>,
    pub horizontal_pod_autoscaler_config: Option<HpaConfig>,
    pub scaling_modifiers: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HpaConfig {
    pub name: Option<String>,
    pub behavior: Option<HpaBehavior>,
}

/// `autoscaling/v2` `HorizontalPodAutoscalerBehavior`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HpaBehavior {
    pub scale_up: Option<ScalingRules>,
    pub scale_down: Option<ScalingRules>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ScalingRules {
    pub stabilization_window_seconds: Option<u32>,
    /// `Max`, `Min` or `Disabled`.
    pub select_policy: Option<String>,
    /// A Quantity (`"0.05"` or `50m`); Kubernetes >= 1.35 (beta) honours it.
    pub tolerance: Option<Quantity>,
    #[serde(default)]
    pub policies: Vec<ScalingPolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ScalingPolicy {
    /// `Pods` or `Percent`.
    #[serde(rename = "type")]
    pub kind: String,
    pub value: u32,
    pub period_seconds: u32,
}

/// A Kubernetes resource quantity, written as a string or a number.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Quantity {
    Number(f64),
    Text(String),
}

impl Quantity {
    /// The value as a float: plain decimals and the milli suffix (`50m`).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Quantity::Number(n) => Some(*n),
            Quantity::Text(t) => match t.strip_suffix('m') {
                Some(milli) => milli.parse::<f64>().ok().map(|m| m / 1000.0),
                None => t.parse().ok(),
            },
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Trigger {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: Option<String>,
    /// `AverageValue`, `Value` or `Utilization`.
    pub metric_type: Option<String>,
    pub use_cached_metrics: Option<bool>,
    pub metadata: BTreeMap<String, String>,
    pub authentication_ref: Option<AuthenticationRef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthenticationRef {
    pub name: String,
    pub kind: Option<String>,
}

pub type TriggerAuthentication = Object<TriggerAuthenticationSpec>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TriggerAuthenticationSpec {
    #[serde(default)]
    pub secret_target_ref: Vec<SecretTargetRef>,
    #[serde(default)]
    pub env: Vec<EnvTargetRef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretTargetRef {
    pub parameter: String,
    pub name: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvTargetRef {
    pub parameter: String,
    pub name: String,
    pub container_name: Option<String>,
}

// ----------------------------------------------- Prometheus operator

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamespaceSelector {
    pub any: Option<bool>,
    #[serde(default)]
    pub match_names: Vec<String>,
}

pub type ServiceMonitor = Object<ServiceMonitorSpec>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    pub selector: LabelSelector,
    pub namespace_selector: Option<NamespaceSelector>,
    pub job_label: Option<String>,
    #[serde(default)]
    pub target_labels: Vec<String>,
    #[serde(default)]
    pub pod_target_labels: Vec<String>,
    pub endpoints: Vec<ScrapeEndpoint>,
}

pub type PodMonitor = Object<PodMonitorSpec>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodMonitorSpec {
    pub selector: LabelSelector,
    pub namespace_selector: Option<NamespaceSelector>,
    pub job_label: Option<String>,
    #[serde(default)]
    pub pod_target_labels: Vec<String>,
    pub pod_metrics_endpoints: Vec<ScrapeEndpoint>,
}

/// A ServiceMonitor `endpoint` or a PodMonitor `podMetricsEndpoint`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ScrapeEndpoint {
    pub port: Option<String>,
    pub path: Option<String>,
    pub scheme: Option<String>,
    pub interval: Option<String>,
    pub scrape_timeout: Option<String>,
    pub honor_labels: Option<bool>,
    #[serde(default)]
    pub relabelings: Vec<Relabeling>,
    #[serde(default)]
    pub metric_relabelings: Vec<Relabeling>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Relabeling {
    #[serde(default)]
    pub source_labels: Vec<String>,
    pub separator: Option<String>,
    pub target_label: Option<String>,
    pub regex: Option<String>,
    pub modulus: Option<u64>,
    pub replacement: Option<String>,
    pub action: Option<String>,
}

pub type PrometheusRule = Object<PrometheusRuleSpec>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusRuleSpec {
    pub groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleGroup {
    pub name: String,
    pub interval: Option<String>,
    pub limit: Option<u32>,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub alert: Option<String>,
    pub record: Option<String>,
    pub expr: String,
    #[serde(rename = "for")]
    pub for_: Option<String>,
    pub keep_firing_for: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

// -------------------------------------------------------------- Strimzi

pub type Kafka = Object<KafkaSpec>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KafkaSpec {
    pub kafka: KafkaClusterSpec,
    pub entity_operator: Option<EntityOperator>,
    pub cruise_control: Option<Value>,
    pub kafka_exporter: Option<KafkaExporter>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KafkaClusterSpec {
    pub version: Option<String>,
    pub metadata_version: Option<String>,
    pub listeners: Vec<KafkaListener>,
    #[serde(default)]
    pub config: BTreeMap<String, Value>,
    pub resources: Option<Value>,
    pub template: Option<Value>,
    pub metrics_config: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaListener {
    pub name: String,
    pub port: u16,
    #[serde(rename = "type")]
    pub kind: String,
    pub tls: bool,
    pub authentication: Option<Value>,
    pub configuration: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EntityOperator {
    pub topic_operator: Option<Value>,
    pub user_operator: Option<Value>,
    pub template: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KafkaExporter {
    pub topic_regex: Option<String>,
    pub group_regex: Option<String>,
    pub resources: Option<Value>,
    pub template: Option<Value>,
}

pub type KafkaNodePool = Object<KafkaNodePoolSpec>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KafkaNodePoolSpec {
    pub replicas: u32,
    /// `controller` and/or `broker` (KRaft).
    pub roles: Vec<String>,
    pub storage: KafkaStorage,
    pub resources: Option<Value>,
    pub template: Option<Value>,
    pub jvm_options: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KafkaStorage {
    /// `ephemeral`, `persistent-claim` or `jbod`.
    #[serde(rename = "type")]
    pub kind: String,
    pub id: Option<u32>,
    pub size: Option<String>,
    pub size_limit: Option<String>,
    pub class: Option<String>,
    pub delete_claim: Option<bool>,
    pub kraft_metadata: Option<String>,
    #[serde(default)]
    pub volumes: Vec<KafkaStorage>,
}

pub type KafkaTopic = Object<KafkaTopicSpec>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KafkaTopicSpec {
    pub topic_name: Option<String>,
    pub partitions: u32,
    pub replicas: u32,
    #[serde(default)]
    pub config: BTreeMap<String, Value>,
}

/// The custom kinds rtc ships, by `kind`, with the API groups they may use.
pub const CUSTOM_KINDS: &[(&str, &[&str])] = &[
    ("ScaledObject", &["keda.sh/v1alpha1"]),
    ("TriggerAuthentication", &["keda.sh/v1alpha1"]),
    ("ServiceMonitor", &["monitoring.coreos.com/v1"]),
    ("PodMonitor", &["monitoring.coreos.com/v1"]),
    ("PrometheusRule", &["monitoring.coreos.com/v1"]),
    ("Kafka", &["kafka.strimzi.io/v1beta2", "kafka.strimzi.io/v1"]),
    ("KafkaNodePool", &["kafka.strimzi.io/v1beta2", "kafka.strimzi.io/v1"]),
    ("KafkaTopic", &["kafka.strimzi.io/v1beta2", "kafka.strimzi.io/v1"]),
];

/// Whether `object` is one of the custom kinds above (else a core kind).
pub fn is_custom(object: &Value) -> bool {
    let kind = object["kind"].as_str().unwrap_or_default();
    CUSTOM_KINDS.iter().any(|(k, _)| *k == kind)
}

/// Parses a custom object into its typed struct, refusing unknown fields,
/// an unknown kind or an API version the kind does not have.
pub fn check(object: &Value) -> Result<(), String> {
    let kind = object["kind"].as_str().unwrap_or_default();
    let api = object["apiVersion"].as_str().unwrap_or_default();
    let name = object["metadata"]["name"].as_str().unwrap_or("?");
    let Some((_, apis)) = CUSTOM_KINDS.iter().find(|(k, _)| *k == kind) else {
        return Err(format!("{kind}/{name}: not a custom kind rtc knows"));
    };
    if !apis.contains(&api) {
        return Err(format!("{kind}/{name}: apiVersion {api} is not one of {apis:?}"));
    }
    fn parse<T: serde::de::DeserializeOwned>(object: &Value) -> Result<(), String> {
        serde_path_to_error::deserialize::<_, T>(object.clone()).map(|_| ()).map_err(|e| e.to_string())
    }
    let result = match kind {
        "ScaledObject" => parse::<ScaledObject>(object),
        "TriggerAuthentication" => parse::<TriggerAuthentication>(object),
        "ServiceMonitor" => parse::<ServiceMonitor>(object),
        "PodMonitor" => parse::<PodMonitor>(object),
        "PrometheusRule" => parse::<PrometheusRule>(object),
        "Kafka" => parse::<Kafka>(object),
        "KafkaNodePool" => parse::<KafkaNodePool>(object),
        _ => parse::<KafkaTopic>(object),
    };
    result.map_err(|e| format!("{kind}/{name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scaled_object(spec: Value) -> Value {
        json!({"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "socket"}, "spec": spec})
    }

    #[test]
    fn a_misspelt_field_is_refused_with_its_path() {
        let ok = scaled_object(
            json!({"scaleTargetRef": {"name": "socket"}, "triggers": [{"type": "cpu", "metadata": {"value": "80"}}]}),
        );
        check(&ok).unwrap();
        let typo = scaled_object(json!({"scaleTargetRef": {"name": "socket"}, "maxReplicas": 5, "triggers": []}));
        let err = check(&typo).unwrap_err();
        assert!(err.contains("maxReplicas"), "{err}");
        let deep = scaled_object(json!({"scaleTargetRef": {"name": "socket"}, "triggers": [],
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": {"stabilisationWindowSeconds": 0}}}}}));
        let err = check(&deep).unwrap_err();
        assert!(err.contains("advanced.horizontalPodAutoscalerConfig.behavior.scaleDown"), "{err}");
    }

    #[test]
    fn wrong_api_versions_and_unknown_kinds_are_refused() {
        let mut o = scaled_object(json!({"scaleTargetRef": {"name": "socket"}, "triggers": []}));
        o["apiVersion"] = json!("keda.k8s.io/v1alpha1");
        assert!(check(&o).unwrap_err().contains("apiVersion"));
        o["kind"] = json!("ScaledJob");
        assert!(check(&o).unwrap_err().contains("not a custom kind"));
    }

    #[test]
    fn quantities_read_as_numbers() {
        assert_eq!(Quantity::Text("50m".into()).as_f64(), Some(0.05));
        assert_eq!(Quantity::Text("0.01".into()).as_f64(), Some(0.01));
        assert_eq!(Quantity::Number(0.1).as_f64(), Some(0.1));
        assert_eq!(Quantity::Text("lots".into()).as_f64(), None);
    }
}
