//! Every manifest under `deploy/` must be a valid object of its kind.
//!
//! Each YAML document is deserialized into the matching k8s-openapi type and
//! serialized back; any difference from the input is a field the type does not
//! know (a typo) or a value of the wrong shape, and fails the test. CRDs we do not
//! have types for (ServiceMonitor) and non-Kubernetes files are checked
//! structurally. The FlashJob CRD must equal the one generated from the Rust types.

use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files(&p, ext, out);
        } else if p.extension().and_then(|e| e.to_str()) == Some(ext) {
            out.push(p);
        }
    }
}

/// Paths where `a` and `b` differ.
fn diff(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                let p = format!("{path}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(l), Some(r)) => diff(l, r, &p, out),
                    (Some(_), None) => out.push(format!("{p}: unknown field or wrong shape")),
                    (None, Some(_)) => out.push(format!("{p}: added by the type")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (l, r)) in x.iter().zip(y).enumerate() {
                diff(l, r, &format!("{path}[{i}]"), out);
            }
        }
        _ if a != b => out.push(format!("{path}: {a} != {b}")),
        _ => {}
    }
}

fn roundtrip<T: DeserializeOwned + Serialize>(doc: &Value) -> Result<(), String> {
    let typed: T = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    diff(doc, &back, "", &mut out);
    if out.is_empty() {
        Ok(())
    } else {
        Err(out.join("; "))
    }
}

fn check_keys(v: &Value, allowed: &[&str], what: &str) -> Result<(), String> {
    let obj = v.as_object().ok_or_else(|| format!("{what} must be a mapping"))?;
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!("{what}: unknown field {k}")),
        None => Ok(()),
    }
}

fn check_service_monitor(doc: &Value) -> Result<(), String> {
    check_keys(doc, &["apiVersion", "kind", "metadata", "spec"], "ServiceMonitor")?;
    roundtrip::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>(&doc["metadata"])?;
    let spec = &doc["spec"];
    check_keys(spec, &["selector", "endpoints", "namespaceSelector", "jobLabel"], "spec")?;
    roundtrip::<LabelSelector>(&spec["selector"])?;
    let endpoints = spec["endpoints"].as_array().ok_or("spec.endpoints must be a list")?;
    if endpoints.is_empty() {
        return Err("spec.endpoints is empty".into());
    }
    for ep in endpoints {
        check_keys(ep, &["port", "path", "interval", "scheme", "scrapeTimeout", "honorLabels"], "endpoint")?;
        if !ep["port"].is_string() {
            return Err("endpoint.port must name a Service port".into());
        }
    }
    Ok(())
}

fn check(doc: &Value) -> Result<(), String> {
    let api_version = doc["apiVersion"].as_str().unwrap_or_default();
    let kind = doc["kind"].as_str().unwrap_or_default();
    match (api_version, kind) {
        ("v1", "Namespace") => roundtrip::<Namespace>(doc),
        ("v1", "ConfigMap") => roundtrip::<ConfigMap>(doc),
        ("v1", "Secret") => roundtrip::<Secret>(doc),
        ("v1", "Service") => roundtrip::<Service>(doc),
        ("v1", "ServiceAccount") => roundtrip::<ServiceAccount>(doc),
        ("apps/v1", "Deployment") => roundtrip::<Deployment>(doc),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => roundtrip::<ClusterRole>(doc),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => roundtrip::<ClusterRoleBinding>(doc),
        ("rbac.authorization.k8s.io/v1", "Role") => roundtrip::<Role>(doc),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => roundtrip::<RoleBinding>(doc),
        ("autoscaling/v2", "HorizontalPodAutoscaler") => roundtrip::<HorizontalPodAutoscaler>(doc),
        ("networking.k8s.io/v1", "Ingress") => roundtrip::<Ingress>(doc),
        ("policy/v1", "PodDisruptionBudget") => roundtrip::<PodDisruptionBudget>(doc),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => roundtrip::<CustomResourceDefinition>(doc),
        ("monitoring.coreos.com/v1", "ServiceMonitor") => check_service_monitor(doc),
        _ => Err(format!("no check for {api_version} {kind}: add one")),
    }
}

#[test]
fn every_kubernetes_manifest_matches_its_type() {
    let mut paths = Vec::new();
    for dir in ["operator", "otafleet"] {
        files(&deploy_dir().join(dir), "yaml", &mut paths);
    }
    assert!(paths.len() >= 10, "manifests found: {paths:?}");
    let mut failures = Vec::new();
    let mut kinds = Vec::new();
    for path in &paths {
        let text = std::fs::read_to_string(path).expect("readable");
        for (i, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let doc = Value::deserialize(de).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            if doc.is_null() {
                continue;
            }
            kinds.push(doc["kind"].as_str().unwrap_or_default().to_string());
            if let Err(e) = check(&doc) {
                failures.push(format!("{} (document {i}): {e}", path.display()));
            }
        }
    }
    assert!(failures.is_empty(), "invalid manifests:\n{}", failures.join("\n"));
    for kind in [
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "ServiceMonitor",
        "Namespace",
        "ConfigMap",
        "HorizontalPodAutoscaler",
        "Ingress",
        "PodDisruptionBudget",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} under deploy/");
    }
}

#[test]
fn a_typo_is_caught() {
    let doc = serde_json::json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
        "spec": {"selectr": {"app": "x"}, "ports": [{"port": 80}]}
    });
    let err = check(&doc).expect_err("typo must fail");
    assert!(err.contains("spec.selectr"), "{err}");
}

#[test]
fn checked_in_crd_is_the_generated_one() {
    let path = deploy_dir().join("operator/crd.yaml");
    let generated = otafleet_k8s::crd::crd_yaml().expect("renders");
    if std::env::var_os("OTAFLEET_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("writes crd.yaml");
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "deploy/operator/crd.yaml is stale: run `otafleet operator crd > deploy/operator/crd.yaml` \
         (or OTAFLEET_BLESS=1 cargo test -p otafleet-k8s --test manifests)"
    );
}

#[test]
fn operator_secret_values_are_not_committed() {
    let mut paths = Vec::new();
    files(&deploy_dir(), "yaml", &mut paths);
    for path in paths {
        let text = std::fs::read_to_string(&path).expect("readable");
        assert!(!text.contains("kind: Secret\n"), "{} commits a Secret", path.display());
    }
}

#[test]
fn prometheus_scrape_config_is_well_formed() {
    let text = std::fs::read_to_string(deploy_dir().join("prometheus/scrape-config.yaml")).expect("readable");
    let doc: Value = serde_yaml::from_str(&text).expect("yaml");
    check_keys(&doc, &["scrape_configs"], "scrape config").expect("top level");
    let jobs = doc["scrape_configs"].as_array().expect("list");
    let names: Vec<&str> = jobs.iter().filter_map(|j| j["job_name"].as_str()).collect();
    assert_eq!(names, vec!["otafleet", "otafleet-operator"]);
    for job in jobs {
        check_keys(
            job,
            &[
                "job_name",
                "metrics_path",
                "scrape_interval",
                "scrape_timeout",
                "scheme",
                "kubernetes_sd_configs",
                "static_configs",
                "relabel_configs",
            ],
            "scrape job",
        )
        .expect("known keys");
        for r in job["relabel_configs"].as_array().into_iter().flatten() {
            check_keys(r, &["source_labels", "action", "regex", "target_label", "replacement", "separator"], "relabel")
                .expect("known relabel keys");
        }
    }
}

#[test]
fn grafana_dashboard_covers_the_metrics() {
    let text = std::fs::read_to_string(deploy_dir().join("grafana/otafleet-dashboard.json")).expect("readable");
    let dash: Value = serde_json::from_str(&text).expect("valid JSON");
    assert!(dash["title"].is_string() && dash["schemaVersion"].is_u64());
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = std::collections::BTreeSet::new();
    let mut exprs = String::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().expect("panel id")), "duplicate panel id");
        assert!(p["type"].is_string() && p["gridPos"]["w"].is_u64() && p["gridPos"]["h"].is_u64());
        for t in p["targets"].as_array().expect("targets") {
            assert!(t["refId"].is_string());
            exprs.push_str(t["expr"].as_str().expect("expr"));
            exprs.push('\n');
        }
    }
    for metric in [
        "ota_jobs_total",
        "ota_jobs_pending",
        "ota_jobs_successful",
        "ota_updated_pods_total",
        "ota_last_run_timestamp_seconds",
        "otafleet_http_request_duration_seconds_bucket",
        "otafleet_rollouts",
        "by (state)",
        "otafleet_devices",
        "by (health)",
    ] {
        assert!(exprs.contains(metric), "dashboard lacks {metric}");
    }
}

#[test]
fn control_plane_probes_are_the_health_endpoints_and_disruptions_are_budgeted() {
    let text = std::fs::read_to_string(deploy_dir().join("otafleet/deployment.yaml")).expect("readable");
    let d: Deployment = serde_yaml::from_str(&text).expect("a Deployment");
    let spec = d.spec.expect("spec");
    let c = &spec.template.spec.expect("pod spec").containers[0];
    let path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref().and_then(|p| p.http_get.as_ref()).and_then(|h| h.path.clone()).unwrap_or_default()
    };
    assert_eq!(path(&c.liveness_probe), "/healthz");
    assert_eq!(path(&c.readiness_probe), "/readyz");
    let env = c.env.as_deref().unwrap_or_default();
    assert!(env.iter().any(|e| e.name == "OTAFLEET_REPLICA_ID"), "the pod name is the replica id");
    let text = std::fs::read_to_string(deploy_dir().join("otafleet/pdb.yaml")).expect("readable");
    let pdb: PodDisruptionBudget = serde_yaml::from_str(&text).expect("a PodDisruptionBudget");
    let pdb = pdb.spec.expect("spec");
    assert_eq!(pdb.selector, Some(spec.selector), "the budget covers the Deployment's pods");
    assert!(pdb.max_unavailable.is_some() || pdb.min_available.is_some());
}
