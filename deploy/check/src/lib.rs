//! Offline checks of `deploy/k8s`: there is no API server here, so the
//! manifests are rendered by a Kustomize-equivalent renderer
//! ([`kustomize`]) and the custom resources (KEDA, Prometheus operator,
//! Strimzi) are parsed into typed structs that reject unknown fields
//! ([`crds`]). Core kinds are validated against the Kubernetes schemas by
//! `kubernetes-validate` in `scripts/test`, fed by the `render-manifests` bin.

pub mod crds;
pub mod kustomize;

/// YAML reading through serde-saphyr, with its errors as text.
pub mod yaml {
    use serde::de::DeserializeOwned;

    pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, String> {
        serde_saphyr::from_str(text).map_err(|e| e.to_string())
    }

    /// Every non-empty document of a multi-document stream.
    pub fn documents(text: &str) -> Result<Vec<serde_json::Value>, String> {
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(text).map_err(|e| e.to_string())?;
        Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
    }
}
