//! A Kustomize-equivalent renderer for the subset of Kustomize that
//! `deploy/k8s` uses, so the manifests can be rendered and validated on a
//! machine without `kubectl` or `kustomize`.
//!
//! Supported: `resources` (files, or folders holding a kustomization),
//! `components`, `namespace`, `labels` (pairs, `includeSelectors: false`,
//! optional `includeTemplates`), `images` (name → newName/newTag/digest) and
//! `patches` with `path` (strategic-merge patches, optionally with a
//! `target`). Anything else in a kustomization is an error rather than being
//! ignored, so the renderer can never silently disagree with Kustomize.
//!
//! The order is Kustomize's: a kustomization's resources are accumulated,
//! then each component adds its resources and applies its transformers to
//! everything accumulated so far, then the kustomization's own transformers
//! run (patches, then namespace, labels, images).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::yaml;

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Yaml { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Unsupported { path: PathBuf, message: String },
    #[error("{path}: patch {patch} matches no resource")]
    UnmatchedPatch { path: PathBuf, patch: String },
    #[error("{path}: {kind}/{name} is defined twice")]
    Duplicate { path: PathBuf, kind: String, name: String },
}

/// A `kustomization.yaml` (or a `Component`). Unknown keys are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Kustomization {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    components: Vec<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    labels: Vec<LabelSet>,
    #[serde(default)]
    images: Vec<Image>,
    #[serde(default)]
    patches: Vec<Patch>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LabelSet {
    pairs: Map<String, Value>,
    #[serde(default)]
    include_selectors: bool,
    #[serde(default)]
    include_templates: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Image {
    name: String,
    new_name: Option<String>,
    new_tag: Option<String>,
    digest: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Patch {
    path: String,
    #[serde(default)]
    target: Option<Target>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Target {
    kind: Option<String>,
    name: Option<String>,
    group: Option<String>,
    version: Option<String>,
}

/// Renders the kustomization in `dir` into its objects, in Kustomize's order.
pub fn render(dir: &Path) -> Result<Vec<Value>, RenderError> {
    let mut objects = Vec::new();
    build(dir, false, &mut objects)?;
    Ok(objects)
}

/// Builds `dir` into `acc`. A component works on the accumulated objects of
/// its parent; a kustomization starts from nothing and appends its result.
fn build(dir: &Path, as_component: bool, acc: &mut Vec<Value>) -> Result<(), RenderError> {
    let file = dir.join("kustomization.yaml");
    let text = std::fs::read_to_string(&file).map_err(|source| RenderError::Read { path: file.clone(), source })?;
    let k: Kustomization =
        yaml::from_str(&text).map_err(|message| RenderError::Yaml { path: file.clone(), message })?;
    check_kind(&file, &k, as_component)?;

    let mut own = Vec::new();
    let target: &mut Vec<Value> = if as_component { acc } else { &mut own };
    for resource in &k.resources {
        let path = dir.join(resource);
        if path.is_dir() {
            let mut sub = Vec::new();
            build(&path, false, &mut sub)?;
            add_all(&file, target, sub)?;
        } else {
            let text =
                std::fs::read_to_string(&path).map_err(|source| RenderError::Read { path: path.clone(), source })?;
            let docs = yaml::documents(&text).map_err(|message| RenderError::Yaml { path: path.clone(), message })?;
            add_all(&file, target, docs)?;
        }
    }
    for component in &k.components {
        build(&dir.join(component), true, target)?;
    }
    for patch in &k.patches {
        apply_patch(dir, &file, patch, target)?;
    }
    for object in target.iter_mut() {
        if let Some(ns) = &k.namespace {
            set_namespace(object, ns);
        }
        for labels in &k.labels {
            add_labels(object, labels);
        }
        for image in &k.images {
            set_images(object, image);
        }
    }
    if !as_component {
        add_all(&file, acc, own)?;
    }
    Ok(())
}

fn check_kind(file: &Path, k: &Kustomization, as_component: bool) -> Result<(), RenderError> {
    let (want_kind, want_api) = if as_component {
        ("Component", "kustomize.config.k8s.io/v1alpha1")
    } else {
        ("Kustomization", "kustomize.config.k8s.io/v1beta1")
    };
    let kind = k.kind.as_deref().unwrap_or("Kustomization");
    let api = k.api_version.as_deref().unwrap_or(want_api);
    if kind != want_kind || api != want_api {
        return Err(RenderError::Unsupported {
            path: file.into(),
            message: format!("expected {want_api} {want_kind}, found {api} {kind}"),
        });
    }
    if k.labels.iter().any(|l| l.include_selectors) {
        return Err(RenderError::Unsupported {
            path: file.into(),
            message: "labels with includeSelectors: true (selectors are immutable; not supported)".into(),
        });
    }
    Ok(())
}

fn add_all(file: &Path, acc: &mut Vec<Value>, new: Vec<Value>) -> Result<(), RenderError> {
    for object in new {
        let id = identity(&object);
        if acc.iter().any(|o| identity(o) == id) {
            return Err(RenderError::Duplicate { path: file.into(), kind: id.0, name: id.1 });
        }
        acc.push(object);
    }
    Ok(())
}

/// Kind and name: what a patch or a duplicate check matches on (all
/// objects of one render share a namespace).
fn identity(object: &Value) -> (String, String) {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (s(&object["kind"]), s(&object["metadata"]["name"]))
}

/// Kinds that are not namespaced, of those a manifest here may hold.
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "ClusterTriggerAuthentication",
];

fn set_namespace(object: &mut Value, ns: &str) {
    let kind = object["kind"].as_str().unwrap_or_default();
    if CLUSTER_SCOPED.contains(&kind) {
        return;
    }
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("namespace".into(), Value::String(ns.into()));
    }
}

/// Kinds whose `spec.template` is a pod template.
const WORKLOADS: &[&str] = &["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"];

fn add_labels(object: &mut Value, set: &LabelSet) {
    let kind = object["kind"].as_str().unwrap_or_default().to_owned();
    merge_labels(&mut object["metadata"], &set.pairs);
    if set.include_templates && WORKLOADS.contains(&kind.as_str()) {
        merge_labels(&mut object["spec"]["template"]["metadata"], &set.pairs);
    }
}

fn merge_labels(meta: &mut Value, pairs: &Map<String, Value>) {
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    let labels = meta
        .as_object_mut()
        .expect("made an object above")
        .entry("labels")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(labels) = labels.as_object_mut() {
        for (k, v) in pairs {
            labels.insert(k.clone(), v.clone());
        }
    }
}

fn set_images(object: &mut Value, image: &Image) {
    let kind = object["kind"].as_str().unwrap_or_default();
    let pod = match kind {
        "Pod" => &mut object["spec"],
        "CronJob" => &mut object["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        k if WORKLOADS.contains(&k) => &mut object["spec"]["template"]["spec"],
        _ => return,
    };
    for list in ["initContainers", "containers"] {
        let Some(containers) = pod.get_mut(list).and_then(Value::as_array_mut) else { continue };
        for container in containers {
            let Some(current) = container["image"].as_str() else { continue };
            if let Some(new) = retag(current, image) {
                container["image"] = Value::String(new);
            }
        }
    }
}

/// The image reference `current` after the `images` entry, if it names it.
fn retag(current: &str, image: &Image) -> Option<String> {
    let (without_digest, digest) = match current.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (current, None),
    };
    // A ':' after the last '/' starts a tag; one before it is a registry port.
    let slash = without_digest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match without_digest[slash..].rfind(':') {
        Some(i) => (&without_digest[..slash + i], Some(&without_digest[slash + i + 1..])),
        None => (without_digest, None),
    };
    if name != image.name {
        return None;
    }
    let name = image.new_name.as_deref().unwrap_or(name);
    Some(match (&image.digest, &image.new_tag) {
        (Some(d), _) => format!("{name}@{d}"),
        (None, Some(t)) => format!("{name}:{t}"),
        (None, None) => match (tag, digest) {
            (_, Some(d)) => format!("{name}@{d}"),
            (Some(t), None) => format!("{name}:{t}"),
            (None, None) => name.to_owned(),
        },
    })
}

fn apply_patch(dir: &Path, file: &Path, patch: &Patch, objects: &mut [Value]) -> Result<(), RenderError> {
    let path = dir.join(&patch.path);
    let text = std::fs::read_to_string(&path).map_err(|source| RenderError::Read { path: path.clone(), source })?;
    let body: Value = yaml::from_str(&text).map_err(|message| RenderError::Yaml { path: path.clone(), message })?;
    let (kind, name) = identity(&body);
    let mut matched = 0;
    for object in objects.iter_mut() {
        let (k, n) = identity(object);
        let hit = match &patch.target {
            Some(t) => {
                let api = object["apiVersion"].as_str().unwrap_or_default();
                let (group, version) = api.rsplit_once('/').unwrap_or(("", api));
                t.kind.as_deref().is_none_or(|x| x == k)
                    && t.name.as_deref().is_none_or(|x| x == n)
                    && t.group.as_deref().is_none_or(|x| x == group)
                    && t.version.as_deref().is_none_or(|x| x == version)
            }
            None => k == kind && n == name,
        };
        if hit {
            let builtin = is_builtin(object);
            let mut patch_body = body.clone();
            if patch.target.is_some() {
                // A targeted patch keeps the target's identity.
                patch_body.as_object_mut().map(|m| {
                    m.remove("metadata").map(|mut meta| {
                        if let Some(meta) = meta.as_object_mut() {
                            meta.remove("name");
                            if !meta.is_empty() {
                                m.insert("metadata".into(), Value::Object(meta.clone()));
                            }
                        }
                    })
                });
            }
            strategic_merge(object, &patch_body, "", builtin, &path)?;
            matched += 1;
        }
    }
    if matched == 0 {
        return Err(RenderError::UnmatchedPatch { path: file.into(), patch: patch.path.clone() });
    }
    Ok(())
}

/// Built-in kinds carry strategic-merge keys; for custom resources Kustomize
/// has none, so their lists are replaced whole.
fn is_builtin(object: &Value) -> bool {
    let api = object["apiVersion"].as_str().unwrap_or_default();
    !api.contains('/')
        || ["apps/", "batch/", "policy/", "rbac.authorization.k8s.io/", "networking.k8s.io/", "autoscaling/"]
            .iter()
            .any(|p| api.starts_with(p))
}

/// The merge key of a list in a built-in kind, by the list's field name.
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers" | "initContainers" | "ephemeralContainers" | "volumes" | "env" | "imagePullSecrets" => "name",
        "volumeMounts" => "mountPath",
        "ports" => "containerPort",
        _ => return None,
    })
}

/// Merges `patch` into `target`: maps merge recursively, `null` removes a
/// key, lists of built-in kinds merge by their key, other lists are replaced.
fn strategic_merge(
    target: &mut Value,
    patch: &Value,
    field: &str,
    builtin: bool,
    path: &Path,
) -> Result<(), RenderError> {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if k.starts_with('$') {
                    return Err(RenderError::Unsupported {
                        path: path.into(),
                        message: format!("patch directive {k} is not supported"),
                    });
                }
                if v.is_null() {
                    t.remove(k);
                } else if let Some(existing) = t.get_mut(k) {
                    strategic_merge(existing, v, k, builtin, path)?;
                } else {
                    t.insert(k.clone(), v.clone());
                }
            }
            Ok(())
        }
        (Value::Array(t), Value::Array(p)) if builtin && merge_key(field).is_some() => {
            // Service ports merge by `port`, container ports by `containerPort`.
            let key = if field == "ports" && p.iter().all(|x| x.get("containerPort").is_none()) {
                "port"
            } else {
                merge_key(field).expect("checked in the guard")
            };
            for item in p {
                match t.iter_mut().find(|x| x.get(key).is_some() && x.get(key) == item.get(key)) {
                    Some(existing) => strategic_merge(existing, item, "", builtin, path)?,
                    None => t.push(item.clone()),
                }
            }
            Ok(())
        }
        (t, p) => {
            *t = p.clone();
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(name: &str, new_name: Option<&str>, new_tag: Option<&str>) -> Image {
        Image { name: name.into(), new_name: new_name.map(Into::into), new_tag: new_tag.map(Into::into), digest: None }
    }

    #[test]
    fn retag_keeps_registry_ports_and_replaces_only_the_named_image() {
        let i = image("reg:5000/rtc/socket", None, Some("1.2.3"));
        assert_eq!(retag("reg:5000/rtc/socket:0.1.0", &i).as_deref(), Some("reg:5000/rtc/socket:1.2.3"));
        assert_eq!(retag("reg:5000/rtc/socket", &i).as_deref(), Some("reg:5000/rtc/socket:1.2.3"));
        assert_eq!(retag("reg:5000/rtc/socket-x:0.1.0", &i), None);
        let moved = image("redis", Some("mirror/redis"), None);
        assert_eq!(retag("redis:7.4", &moved).as_deref(), Some("mirror/redis:7.4"));
    }

    #[test]
    fn strategic_merge_merges_containers_by_name_and_env_by_name() {
        let mut deployment = serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"template": {"spec": {
            "containers": [{"name": "a", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]}, {"name": "b"}]}}}});
        let patch = serde_json::json!({"spec": {"template": {"spec": {
            "containers": [{"name": "a", "env": [{"name": "Y", "value": "3"}, {"name": "Z", "value": "4"}]}]}}}});
        strategic_merge(&mut deployment, &patch, "", true, Path::new("p")).unwrap();
        let containers = &deployment["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers.as_array().unwrap().len(), 2);
        let env: Vec<_> =
            containers[0]["env"].as_array().unwrap().iter().map(|e| (e["name"].clone(), e["value"].clone())).collect();
        assert_eq!(env, vec![("X".into(), "1".into()), ("Y".into(), "3".into()), ("Z".into(), "4".into())]);
    }

    #[test]
    fn custom_resource_lists_are_replaced_and_null_removes() {
        let mut so = serde_json::json!({"apiVersion": "keda.sh/v1alpha1", "spec": {"a": 1, "triggers": [{"type": "cpu"}, {"type": "memory"}]}});
        let patch = serde_json::json!({"spec": {"a": null, "triggers": [{"type": "external-push"}]}});
        strategic_merge(&mut so, &patch, "", false, Path::new("p")).unwrap();
        assert_eq!(so["spec"], serde_json::json!({"triggers": [{"type": "external-push"}]}));
    }

    #[test]
    fn patch_directives_are_refused() {
        let mut o = serde_json::json!({"spec": {}});
        let err =
            strategic_merge(&mut o, &serde_json::json!({"$patch": "delete"}), "", true, Path::new("p")).unwrap_err();
        assert!(err.to_string().contains("$patch"), "{err}");
    }
}
