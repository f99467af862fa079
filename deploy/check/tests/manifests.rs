//! `deploy/k8s` rendered as `kubectl apply -k` would, then checked: custom
//! resources parse into typed structs, every pod is restricted, the socket
//! drains before it is killed, RBAC is least-privilege, and the settings that
//! two objects must agree on (replica bounds, tolerance, partitions, the
//! scaler's address, the env vars the binaries read) do agree.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory};
use rtc_deploy_check::{crds, kustomize};
use serde_json::Value;

fn k8s() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s")
}

/// Every way the manifests are meant to be applied.
fn entry_points() -> Vec<(&'static str, Vec<Value>)> {
    let with_tls = tempdir_kustomization(&format!(
        "resources:\n- {}\ncomponents:\n- {}\n",
        k8s().display(),
        k8s().join("components/scaler-tls").display()
    ));
    vec![
        ("deploy/k8s", render(&k8s())),
        ("overlays/external", render(&k8s().join("overlays/external"))),
        ("deploy/k8s + scaler-tls", render(&with_tls)),
    ]
}

fn render(dir: &Path) -> Vec<Value> {
    kustomize::render(dir).unwrap_or_else(|e| panic!("rendering {}: {e}", dir.display()))
}

fn tempdir_kustomization(body: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rtc-deploy-check-{}-{}", std::process::id(), body.len()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("kustomization.yaml"), body).unwrap();
    dir
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name}"))
}

fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    workload["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no container {name} in {}", workload["metadata"]["name"]))
}

/// A container's literal env values, with `envFrom` ConfigMaps resolved.
fn env(objects: &[Value], container: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for from in container["envFrom"].as_array().into_iter().flatten() {
        if let Some(name) = from["configMapRef"]["name"].as_str() {
            for (k, v) in find(objects, "ConfigMap", name)["data"].as_object().into_iter().flatten() {
                out.insert(k.clone(), v.as_str().unwrap_or_default().to_owned());
            }
        }
    }
    for e in container["env"].as_array().into_iter().flatten() {
        let value = e["value"].as_str().map(str::to_owned).unwrap_or_else(|| "<from a reference>".into());
        out.insert(e["name"].as_str().unwrap().to_owned(), value);
    }
    out
}

fn pod_templates(objects: &[Value]) -> impl Iterator<Item = &Value> {
    objects.iter().filter(|o| matches!(o["kind"].as_str(), Some("Deployment" | "StatefulSet" | "DaemonSet")))
}

#[test]
fn every_entry_point_renders_and_its_custom_objects_parse_strictly() {
    for (entry, objects) in entry_points() {
        let kinds: BTreeSet<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
        for kind in [
            "Namespace",
            "ConfigMap",
            "Deployment",
            "Service",
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "PodDisruptionBudget",
            "ScaledObject",
            "ServiceMonitor",
            "PodMonitor",
            "PrometheusRule",
        ] {
            assert!(kinds.contains(kind), "{entry}: no {kind} (kinds: {kinds:?})");
        }
        let customs: Vec<_> = objects.iter().filter(|o| crds::is_custom(o)).collect();
        for object in &customs {
            crds::check(object).unwrap_or_else(|e| panic!("{entry}: {e}"));
        }
        eprintln!("{entry}: {} objects, {} custom ones parsed strictly", objects.len(), customs.len());
    }
    let defaults = render(&k8s());
    for kind in ["Kafka", "KafkaNodePool", "KafkaTopic"] {
        assert!(defaults.iter().any(|o| o["kind"] == kind), "deploy/k8s: no {kind}");
    }
    let external = render(&k8s().join("overlays/external"));
    assert!(
        !external.iter().any(|o| o["kind"] == "Kafka" || o["metadata"]["name"] == "redis"),
        "the external overlay must not install Kafka or Redis"
    );
}

#[test]
fn everything_is_in_the_rtc_namespace_with_the_recommended_labels() {
    for (entry, objects) in entry_points() {
        for o in &objects {
            let id = format!("{entry}: {}/{}", o["kind"].as_str().unwrap(), o["metadata"]["name"].as_str().unwrap());
            if o["kind"] != "Namespace" {
                assert_eq!(o["metadata"]["namespace"], "rtc", "{id}");
            }
            let labels = &o["metadata"]["labels"];
            for label in ["app.kubernetes.io/name", "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by"] {
                assert!(labels[label].is_string(), "{id}: no label {label}");
            }
        }
    }
}

#[test]
fn every_pod_runs_restricted() {
    for (entry, objects) in entry_points() {
        for workload in pod_templates(&objects) {
            let name = workload["metadata"]["name"].as_str().unwrap();
            let pod = &workload["spec"]["template"]["spec"];
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{entry}: {name}");
            assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault", "{entry}: {name}");
            let containers = pod["containers"]
                .as_array()
                .unwrap()
                .iter()
                .chain(pod["initContainers"].as_array().into_iter().flatten());
            for c in containers {
                let sc = &c["securityContext"];
                let cname = c["name"].as_str().unwrap();
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{entry}: {name}/{cname}");
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{entry}: {name}/{cname}");
                assert!(
                    sc["capabilities"]["drop"].as_array().is_some_and(|d| d.contains(&"ALL".into())),
                    "{entry}: {name}/{cname}"
                );
                for r in ["requests", "limits"] {
                    for res in ["cpu", "memory"] {
                        assert!(c["resources"][r][res].is_string(), "{entry}: {name}/{cname} has no {r}.{res}");
                    }
                }
            }
        }
    }
}

fn ms(env: &BTreeMap<String, String>, key: &str, default: u64) -> u64 {
    env.get(key).map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{key}={v}")))
}

#[test]
fn the_socket_node_drains_before_it_is_killed() {
    let objects = render(&k8s());
    let socket = find(&objects, "Deployment", "socket");
    let c = container(socket, "socket");
    let env = env(&objects, c);
    let admin_port = env["RTC_ADMIN_LISTEN"].rsplit(':').next().unwrap().parse::<u64>().unwrap();
    let ports: BTreeMap<&str, u64> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["containerPort"].as_u64().unwrap()))
        .collect();
    let port_of = |v: &Value| v.as_u64().or_else(|| v.as_str().map(|n| ports[n])).unwrap();

    // SIGTERM drains; a preStop hook could not carry /drain's bearer token.
    assert!(c["lifecycle"]["preStop"].is_null(), "no preStop hook: {}", c["lifecycle"]);
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/livez")] {
        assert_eq!(c[probe]["httpGet"]["path"], path);
        assert_eq!(port_of(&c[probe]["httpGet"]["port"]), admin_port, "{probe}");
    }
    // The kubelet kills at the grace period, preStop included: it must
    // outlast the node's own shutdown deadline (which bounds its drain).
    let grace_ms = socket["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap() * 1000;
    let deadline = ms(&env, "RTC_SHUTDOWN_DEADLINE_MS", 30_000);
    let window = ms(&env, "RTC_DRAIN_WINDOW_MS", 10_000);
    assert!(window < deadline, "drain window {window} ms must fit in the shutdown deadline {deadline} ms");
    assert!(grace_ms > deadline, "grace {grace_ms} ms must exceed the shutdown deadline {deadline} ms");
    // Each pod advertises its own address, and is its own node.
    assert!(env["RTC_ADVERTISED_URL"].contains("$(POD_IP)"), "{}", env["RTC_ADVERTISED_URL"]);
    let node_id = c["env"].as_array().unwrap().iter().find(|e| e["name"] == "RTC_NODE_ID").unwrap();
    assert_eq!(node_id["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
    let headless = find(&objects, "Service", "socket");
    assert_eq!(headless["spec"]["clusterIP"], "None");
}

#[test]
fn the_scaled_object_agrees_with_the_load_balancer_and_the_scaler() {
    let objects = render(&k8s());
    let so: crds::ScaledObject = serde_json::from_value(find(&objects, "ScaledObject", "socket").clone()).unwrap();
    let lb = env(&objects, container(find(&objects, "Deployment", "load-balancer"), "load-balancer"));
    let s = &so.spec;

    assert_eq!(s.scale_target_ref.name, "socket");
    find(&objects, s.scale_target_ref.kind.as_deref().unwrap_or("Deployment"), "socket");
    assert_eq!(s.min_replica_count.map(|n| n.to_string()).as_deref(), lb.get("RTC_MIN_REPLICAS").map(String::as_str));
    assert_eq!(s.max_replica_count.map(|n| n.to_string()).as_deref(), lb.get("RTC_MAX_REPLICAS").map(String::as_str));
    assert_eq!(
        lb.get("RTC_KUBE_WORKLOAD").map(String::as_str),
        Some("socket"),
        "the LB must mark victims of the socket workload"
    );

    // The primary trigger pushes to our scaler's gRPC Service port.
    let push: Vec<_> = s.triggers.iter().filter(|t| t.kind == "external-push").collect();
    assert_eq!(push.len(), 1, "one external-push trigger");
    let scaler = find(&objects, "Service", "keda-scaler");
    let grpc_port = scaler["spec"]["ports"].as_array().unwrap().iter().find(|p| p["name"] == "grpc").unwrap()["port"]
        .as_u64()
        .unwrap();
    assert_eq!(push[0].metadata["scalerAddress"], format!("keda-scaler.rtc.svc.cluster.local:{grpc_port}"));
    // cpu and memory are the backup, on the containers' requests.
    for kind in ["cpu", "memory"] {
        let t = s.triggers.iter().find(|t| t.kind == kind).unwrap_or_else(|| panic!("no {kind} trigger"));
        assert_eq!(t.metric_type.as_deref(), Some("Utilization"), "{kind}");
        let value: u32 = t.metadata["value"].parse().unwrap();
        assert!((75..=95).contains(&value), "{kind} backup at {value}% should sit above normal load");
    }
    assert!(s.fallback.as_ref().is_some_and(|f| f.replicas >= s.min_replica_count.unwrap()), "fallback");

    // Scale-down is already stabilised (and drained) by the load balancer;
    // the HPA's tolerance must be the one the load balancer plans with.
    let behavior =
        s.advanced.as_ref().unwrap().horizontal_pod_autoscaler_config.as_ref().unwrap().behavior.as_ref().unwrap();
    let down = behavior.scale_down.as_ref().unwrap();
    let up = behavior.scale_up.as_ref().unwrap();
    assert_eq!(down.stabilization_window_seconds, Some(0));
    assert_eq!(up.stabilization_window_seconds, Some(0));
    let lb_tolerance: f64 = lb.get("RTC_HPA_TOLERANCE").map_or(0.1, |v| v.parse().unwrap());
    for rules in [up, down] {
        let t = rules.tolerance.as_ref().and_then(crds::Quantity::as_f64).unwrap_or(0.1);
        assert!((t - lb_tolerance).abs() < 1e-9, "HPA tolerance {t} vs the load balancer's {lb_tolerance}");
    }
    // The largest exponential step the engine takes at once must pass.
    let max_step: u32 = lb.get("RTC_SCALE_MAX_STEP").map_or(5, |v| v.parse().unwrap());
    let per_period = up.policies.iter().filter(|p| p.kind == "Pods").map(|p| p.value).max().unwrap_or(0);
    assert!(
        per_period >= max_step,
        "scale-up policy allows {per_period} pods per period, the engine steps up to {max_step}"
    );
    // Likewise the largest scale-in step, of nodes already drained.
    let max_in: u32 = lb.get("RTC_SCALE_IN_MAX_STEP").map_or(5, |v| v.parse().unwrap());
    let per_period = down.policies.iter().filter(|p| p.kind == "Pods").map(|p| p.value).max().unwrap_or(0);
    assert!(per_period >= max_in, "scale-down policy allows {per_period} pods per period, the engine removes {max_in}");

    // `scale-report` judges rtc behind exactly this HPA.
    let model = rtc_load_balancer::scale_report::policies::rtc_deploy_behavior();
    for (rules, modelled) in [(up, &model.scale_up), (down, &model.scale_down)] {
        let policies: Vec<(String, u32, u32)> =
            rules.policies.iter().map(|p| (p.kind.to_lowercase(), p.value, p.period_seconds)).collect();
        let expected: Vec<(String, u32, u32)> = modelled
            .policies
            .iter()
            .map(|p| (format!("{:?}", p.kind).to_lowercase(), p.value, p.period_seconds))
            .collect();
        assert_eq!(policies, expected);
        assert_eq!(rules.stabilization_window_seconds, Some(modelled.stabilization_window_seconds));
        assert_eq!(rules.tolerance.as_ref().and_then(crds::Quantity::as_f64), Some(modelled.tolerance));
    }
}

#[test]
fn kafka_and_redis_settings_agree_across_objects() {
    let objects = render(&k8s());
    let config = &find(&objects, "ConfigMap", "rtc-config")["data"];
    let topic = objects.iter().find(|o| o["kind"] == "KafkaTopic").unwrap();
    let name = topic["spec"]["topicName"].as_str().or(topic["metadata"]["name"].as_str()).unwrap();
    assert_eq!(config["RTC_TOPIC"], name);
    assert_eq!(
        config["RTC_PARTITIONS"],
        topic["spec"]["partitions"].to_string(),
        "routing needs the exact partition count"
    );
    let cluster = topic["metadata"]["labels"]["strimzi.io/cluster"].as_str().unwrap();
    find(&objects, "Kafka", cluster);
    let brokers = config["RTC_KAFKA_BROKERS"].as_str().unwrap();
    assert!(brokers.starts_with(&format!("{cluster}-kafka-bootstrap")), "{brokers}");
    let redis_host =
        config["RTC_REDIS_URL"].as_str().unwrap().trim_start_matches("redis://").split([':', '/']).next().unwrap();
    find(&objects, "Service", redis_host);
}

#[test]
fn the_load_balancer_gets_least_privilege_rbac() {
    let objects = render(&k8s());
    assert!(!objects.iter().any(|o| o["kind"] == "ClusterRole" || o["kind"] == "ClusterRoleBinding"));
    let roles: Vec<_> = objects.iter().filter(|o| o["kind"] == "Role").collect();
    assert_eq!(roles.len(), 1);
    let mut granted = BTreeSet::new();
    for rule in roles[0]["rules"].as_array().unwrap() {
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    granted.insert(format!(
                        "{}/{}:{}",
                        group.as_str().unwrap(),
                        resource.as_str().unwrap(),
                        verb.as_str().unwrap()
                    ));
                }
            }
        }
        assert!(rule["resourceNames"].is_null() || rule["resourceNames"].is_array());
    }
    let wanted: BTreeSet<String> =
        ["/pods:get", "/pods:list", "/pods:watch", "/pods:patch", "apps/deployments:get", "apps/statefulsets:get"]
            .into_iter()
            .map(String::from)
            .collect();
    assert_eq!(granted, wanted);
    let binding = objects.iter().find(|o| o["kind"] == "RoleBinding").unwrap();
    assert_eq!(binding["roleRef"]["name"], roles[0]["metadata"]["name"]);
    let lb = find(&objects, "Deployment", "load-balancer");
    let sa = lb["spec"]["template"]["spec"]["serviceAccountName"].as_str().unwrap();
    assert!(binding["subjects"].as_array().unwrap().iter().any(|s| s["kind"] == "ServiceAccount" && s["name"] == sa));
    for name in ["socket", "keda-scaler"] {
        let pod = &find(&objects, "Deployment", name)["spec"]["template"]["spec"];
        assert_eq!(pod["automountServiceAccountToken"], false, "{name} needs no API access");
    }
}

/// The `RTC_*` variables a binary reads: its clap `env`s, plus `RTC_LOG`.
fn env_names(cmd: clap::Command) -> BTreeSet<String> {
    let mut names: BTreeSet<String> =
        cmd.get_arguments().filter_map(|a| a.get_env()).map(|e| e.to_string_lossy().into_owned()).collect();
    names.insert("RTC_LOG".into());
    names
}

#[test]
fn every_rtc_variable_set_is_one_its_binary_reads() {
    let objects = render(&k8s());
    let binaries = [
        ("socket", env_names(rtc_socket::config::Config::command())),
        ("load-balancer", env_names(rtc_load_balancer::config::ServeArgs::augment_args(clap::Command::new("serve")))),
        ("keda-scaler", env_names(rtc_keda_scaler::config::Config::command())),
    ];
    let mut shared_keys = BTreeSet::new();
    for (name, known) in &binaries {
        assert!(known.len() > 5, "{name}: {known:?}");
        let c = container(find(&objects, "Deployment", name), name);
        for e in c["env"].as_array().into_iter().flatten() {
            let var = e["name"].as_str().unwrap();
            assert!(!var.starts_with("RTC_") || known.contains(var), "{name} sets {var}, which it does not read");
        }
        for from in c["envFrom"].as_array().into_iter().flatten() {
            let cm = find(&objects, "ConfigMap", from["configMapRef"]["name"].as_str().unwrap());
            shared_keys.extend(cm["data"].as_object().unwrap().keys().cloned());
        }
    }
    // A shared key may serve only some of the services, but at least one.
    for key in shared_keys {
        assert!(binaries.iter().any(|(_, known)| known.contains(&key)), "rtc-config has {key}, which no service reads");
    }
}

/// Where `kubectl` (with its built-in Kustomize) is installed, its render
/// must equal ours object for object. CI machines may not have it.
#[test]
fn the_renderer_agrees_with_kubectl_kustomize_where_available() {
    let Ok(out) = std::process::Command::new("kubectl").arg("kustomize").arg(k8s()).output() else {
        eprintln!("kubectl not installed: comparison skipped");
        return;
    };
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let theirs = rtc_deploy_check::yaml::documents(&String::from_utf8(out.stdout).unwrap()).unwrap();
    let key = |o: &Value| (o["kind"].as_str().unwrap().to_owned(), o["metadata"]["name"].as_str().unwrap().to_owned());
    let sorted = |mut v: Vec<Value>| {
        v.sort_by_key(key);
        v
    };
    let (ours, theirs) = (sorted(render(&k8s())), sorted(theirs));
    assert_eq!(ours.iter().map(key).collect::<Vec<_>>(), theirs.iter().map(key).collect::<Vec<_>>());
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!(a, b, "{:?} differs from kubectl kustomize", key(a));
    }
}
