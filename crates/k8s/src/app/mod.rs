//! ROS applications on Kubernetes: an application spec (YAML) rendered to
//! the objects that run it, and `otafleet app render|apply|status|update|delete`.
//!
//! The spec ([`AppSpec`]) is ours and also accepts, as it is, the
//! `orchestration` block of a Rigelfile (a whole Rigelfile too: the first job
//! whose `with` has one, and `application.distro`). [`render`] makes:
//!
//! * ROS 1 with `deploy_ros_master`: Deployment and Service `ros-master`
//!   (`roscore` on 11311); the app gets `ROS_MASTER_URI`;
//! * ROS 2 with `discovery_server.enabled`: a Fast DDS discovery server
//!   Deployment and headless Service `ros-discovery-server` (UDP 11811); the
//!   app gets `ROS_DISCOVERY_SERVER`, and shared-memory transport off
//!   (`FASTDDS_BUILTIN_TRANSPORTS=UDPv4`): pods on different nodes share no
//!   memory, and multicast discovery does not cross nodes on most CNIs;
//! * one PersistentVolumeClaim `<volume>-pvc` per `persistent_storage` volume;
//! * the application Deployment, named after the app (default
//!   `rigel-k8s-application`), pods labelled `app=<name>`, main container
//!   `ros-app`; with `readiness.command` an init container `readiness-init`
//!   prepares the ready marker on a shared volume and the readiness probe
//!   runs the command once it is there; `rolling_update` becomes the
//!   RollingUpdate strategy; replicas, node selector, tolerations, host
//!   network, host devices (mounted, privileged), resources and env.
//!
//! Then `additional_k8s_params` is deep-merged ([`merge::merge`]: lists of
//! named entries by name) into the application Deployment — or, when its
//! keys are `application`, `ros_master` and `discovery_server`, each into
//! that object. Every object carries `app.kubernetes.io/*` labels and the
//! owner label `otafleet.io/app=<name>`, by which `status` and `delete` find
//! exactly what `apply` made; and every object is checked against the
//! Kubernetes schema (the k8s-openapi types: a field they do not know, as a
//! typo would be, fails the render naming it).

pub mod merge;
mod ops;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Service};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub(crate) use ops::apply_objects;
pub use ops::{run_app, AppCmd};

/// The owner label: which app an object belongs to.
pub const APP_LABEL: &str = "otafleet.io/app";
/// The application Deployment's name when the spec gives none (Rigel's).
pub const DEFAULT_NAME: &str = "rigel-k8s-application";
/// The application's main container.
pub const APP_CONTAINER: &str = "ros-app";
/// The readiness init container.
pub const READINESS_INIT: &str = "readiness-init";
/// The ROS 1 master's Deployment and Service.
pub const ROS_MASTER: &str = "ros-master";
/// The ROS 2 discovery server's Deployment and Service.
pub const DISCOVERY_SERVER: &str = "ros-discovery-server";

fn default_name() -> String {
    DEFAULT_NAME.into()
}
fn default_namespace() -> String {
    "default".into()
}
fn one() -> i32 {
    1
}

/// An application spec. Unknown keys are refused, naming them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// The app's name: its Deployment, its pods' `app` label.
    #[serde(default = "default_name")]
    pub name: String,
    /// Namespace of every object (default `default`).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The application image (Rigel: `application_image`).
    #[serde(alias = "application_image")]
    pub image: String,
    /// The version it is (the `sw_version` label); default: the image's tag.
    #[serde(default)]
    pub version: Option<String>,
    /// ROS distro (`noetic`, `humble`…): tells ROS 1 from ROS 2.
    #[serde(default)]
    pub distro: Option<String>,
    /// 1 or 2 (default: from the distro; else 1 when a master is deployed).
    #[serde(default)]
    pub ros_version: Option<u8>,
    /// ROS 1: a `roscore` Deployment and Service (Rigel's default: true).
    #[serde(default)]
    pub deploy_ros_master: Option<bool>,
    /// Image of the master (default `ros:<distro>-ros-core`, `ros:noetic-ros-core`).
    #[serde(default)]
    pub ros_master_image: Option<String>,
    /// ROS 2: a Fast DDS discovery server.
    #[serde(default)]
    pub discovery_server: Option<DiscoveryServer>,
    /// The readiness command and how long to wait for it.
    #[serde(default)]
    pub readiness: Option<Readiness>,
    /// Volumes claimed and mounted into `ros-app`.
    #[serde(default)]
    pub persistent_storage: Option<PersistentStorage>,
    /// How updates replace pods.
    #[serde(default)]
    pub rolling_update: Option<RollingUpdate>,
    /// Pods of the app (default 1).
    #[serde(default = "one")]
    pub replicas: i32,
    /// Nodes the app may run on.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Kubernetes tolerations, as in a pod spec.
    #[serde(default)]
    pub tolerations: Vec<Value>,
    /// Run in the host's network namespace (ROS 1 on robots often does).
    #[serde(default)]
    pub host_network: bool,
    /// Host devices the app reads (sensors: `/dev/ttyUSB0`), mounted and privileged.
    #[serde(default)]
    pub devices: Vec<String>,
    /// Kubernetes resource requirements of `ros-app` (`requests`, `limits`).
    #[serde(default)]
    pub resources: Option<Value>,
    /// Environment of `ros-app`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Deep-merged into what is generated (see the module docs).
    #[serde(default)]
    pub additional_k8s_params: serde_json::Map<String, Value>,
    /// Prometheus scrape annotations and the log collector's label.
    #[serde(default)]
    pub observability: Option<Observability>,
    /// Rigel's distributed block: accepted, not used here.
    #[serde(default)]
    pub distributed: Option<Value>,
}

/// ROS 2's Fast DDS discovery server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryServer {
    /// Whether it is on.
    #[serde(default)]
    pub enabled: bool,
    /// Default: the application image (which has ROS 2 and Fast DDS).
    #[serde(default)]
    pub image: Option<String>,
    /// Its UDP port (default 11811).
    #[serde(default = "discovery_port")]
    pub port: u16,
}

fn discovery_port() -> u16 {
    11811
}

/// The readiness pattern: an init container and a probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Readiness {
    /// Shell command that says the app is ready.
    pub command: String,
    /// How long `apply` waits for readiness (default 300).
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

/// Rigel's `persistent_storage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistentStorage {
    /// The volumes.
    #[serde(default)]
    pub volumes: Vec<Volume>,
}

/// One claimed volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// Its name; the claim is `<name>-pvc`.
    pub name: String,
    /// A Kubernetes quantity: `1Gi`, `500Mi`.
    pub size: String,
    /// Its StorageClass (default: the cluster's default class).
    #[serde(default)]
    pub storage_class: Option<String>,
    /// Where `ros-app` sees it (default `/data/<name>`).
    #[serde(default)]
    pub mount_path: Option<String>,
    /// Rigel's statically provisioned volumes: not supported (a claim is made).
    #[serde(default)]
    pub host_path: Option<String>,
}

/// The Deployment's update strategy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollingUpdate {
    /// Rigel's `strategy` (`Rolling`; `Recreate` replaces every pod at once).
    #[serde(default)]
    pub strategy: Option<String>,
    /// Pods above `replicas` during an update (default 1).
    #[serde(default)]
    pub max_surge: Option<IntOrPercent>,
    /// Pods that may be unavailable during an update (default 0).
    #[serde(default)]
    pub max_unavailable: Option<IntOrPercent>,
}

/// `1` or `"25%"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntOrPercent {
    /// A count of pods.
    Int(i64),
    /// A share of the replicas, `25%`.
    Percent(String),
}

/// Observability hooks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Observability {
    /// Whether it is on.
    #[serde(default)]
    pub enabled: bool,
    /// The port `ros-app` serves Prometheus metrics on (default 9090).
    #[serde(default)]
    pub metrics_port: Option<u16>,
    /// The metrics path (default `/metrics`).
    #[serde(default)]
    pub metrics_path: Option<String>,
    /// Rigel's stack settings: accepted, not deployed here.
    #[serde(default)]
    pub grafana: Option<Value>,
    /// Rigel's Prometheus settings (accepted, unused).
    #[serde(default)]
    pub prometheus: Option<Value>,
    /// Rigel's Loki settings (accepted, unused).
    #[serde(default)]
    pub loki: Option<Value>,
    /// Rigel's node exporter switch (accepted, unused).
    #[serde(default)]
    pub node_exporter: Option<bool>,
    /// Rigel's ROS metrics switch (accepted, unused).
    #[serde(default)]
    pub ros_metrics: Option<bool>,
}

/// A spec that cannot be used, naming the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// Where, e.g. `persistent_storage.volumes[0].size`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn bad(field: &str, message: impl Into<String>) -> SpecError {
    SpecError { field: field.to_string(), message: message.into() }
}

/// Reads a spec: our own, a Rigelfile's `orchestration` block, or a whole
/// Rigelfile (the first job whose `with` has an `orchestration`).
pub fn parse(text: &str) -> Result<AppSpec, SpecError> {
    let doc: Value = serde_yaml::from_str(text).map_err(|e| bad("(document)", e.to_string()))?;
    let mut spec = doc.clone();
    let mut distro = None;
    if let Some(jobs) = doc.get("jobs").and_then(Value::as_object) {
        spec = jobs
            .values()
            .find_map(|j| j.pointer("/with/orchestration").cloned())
            .ok_or_else(|| bad("jobs", "no job has `with.orchestration`"))?;
        distro = doc.pointer("/application/distro").cloned();
    } else if let Some(o) = doc.get("orchestration") {
        spec = o.clone();
    }
    if let (Some(d), Some(m)) = (distro, spec.as_object_mut()) {
        m.entry("distro").or_insert(d);
    }
    from_value(spec)
}

/// A spec given as a JSON value (an `app` release's `app_spec`), validated.
pub fn from_value(spec: Value) -> Result<AppSpec, SpecError> {
    let spec: AppSpec = serde_path_to_error::deserialize(spec).map_err(|e| {
        let path = e.path().to_string();
        bad(if path == "." { "(spec)" } else { &path }, e.into_inner().to_string())
    })?;
    validate(&spec)?;
    Ok(spec)
}

/// Annotation of an app Deployment: the spec (JSON) last applied to it.
pub const SPEC_ANNOTATION: &str = "otafleet.io/spec";
/// Annotation of an app Deployment: the spec before the last one a cluster agent applied.
pub const PREVIOUS_SPEC_ANNOTATION: &str = "otafleet.io/previous-spec";

/// Records on the app Deployment among `objects` the spec they were rendered
/// from (and the image, so its `sw_version` label is trusted: see
/// `cluster::workload_version`), and `previous`, the spec and version it replaces.
pub fn annotate(objects: &mut [Value], spec: &AppSpec, previous: Option<(&str, &str)>) {
    let Some(app) = objects.iter_mut().find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == json!(spec.name))
    else {
        return;
    };
    let annotations = &mut app["metadata"]["annotations"];
    if !annotations.is_object() {
        *annotations = json!({});
    }
    annotations[SPEC_ANNOTATION] = json!(serde_json::to_string(spec).unwrap_or_default());
    annotations[crate::cluster::IMAGE_ANNOTATION] = json!(spec.image);
    if let Some((spec, version)) = previous {
        annotations[PREVIOUS_SPEC_ANNOTATION] = json!(spec);
        annotations[crate::cluster::PREVIOUS_VERSION_ANNOTATION] = json!(version);
    }
}

/// A Kubernetes quantity (`1Gi`, `500Mi`, `2`, `0.5`), not negative.
pub fn quantity(s: &str) -> Result<(), String> {
    let suffixes = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "m", "k", "M", "G", "T", "P", "E", ""];
    let number_end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let number_ok = !number.is_empty() && number != "." && number.matches('.').count() <= 1;
    if !number_ok || !suffixes.contains(&suffix) {
        return Err(format!(
            "'{s}' is not a Kubernetes quantity (a non-negative number with Ki, Mi, Gi, Ti, m, k, M, G, T…: 1Gi, 500Mi)"
        ));
    }
    Ok(())
}

/// A DNS-1123 label (Kubernetes object names of Services, and ours).
fn dns_label(field: &str, s: &str) -> Result<(), SpecError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(bad(field, format!("'{s}' is not a valid name: 1 to 63 lowercase letters, digits or '-'")))
    }
}

fn validate(s: &AppSpec) -> Result<(), SpecError> {
    dns_label("name", &s.name)?;
    dns_label("namespace", &s.namespace)?;
    otafleet_core::validate::image(&s.image).map_err(|m| bad("image", m))?;
    if let Some(v) = &s.version {
        otafleet_core::validate::version(v).map_err(|m| bad("version", m))?;
    }
    if let Some(i) = &s.ros_master_image {
        otafleet_core::validate::image(i).map_err(|m| bad("ros_master_image", m))?;
    }
    if let Some(v) = s.ros_version {
        if v != 1 && v != 2 {
            return Err(bad("ros_version", "1 or 2"));
        }
    }
    if let Some(d) = &s.discovery_server {
        if let Some(i) = &d.image {
            otafleet_core::validate::image(i).map_err(|m| bad("discovery_server.image", m))?;
        }
    }
    if s.replicas < 0 {
        return Err(bad("replicas", "must not be negative"));
    }
    if let Some(r) = &s.readiness {
        if r.command.trim().is_empty() {
            return Err(bad("readiness.command", "must not be empty"));
        }
    }
    if let Some(st) = &s.persistent_storage {
        let mut seen = std::collections::HashSet::new();
        for (i, v) in st.volumes.iter().enumerate() {
            let f = |x: &str| format!("persistent_storage.volumes[{i}].{x}");
            dns_label(&f("name"), &v.name)?;
            if !seen.insert(&v.name) {
                return Err(bad(&f("name"), format!("volume '{}' is listed twice", v.name)));
            }
            quantity(&v.size).map_err(|m| bad(&f("size"), m))?;
            if v.host_path.is_some() {
                return Err(bad(&f("host_path"), "statically provisioned volumes are not supported; a claim is made"));
            }
            if let Some(p) = &v.mount_path {
                if !p.starts_with('/') {
                    return Err(bad(&f("mount_path"), "an absolute path"));
                }
            }
        }
    }
    if let Some(r) = &s.rolling_update {
        if let Some(strategy) = &r.strategy {
            if strategy != "Rolling" && strategy != "RollingUpdate" && strategy != "Recreate" {
                return Err(bad("rolling_update.strategy", "Rolling or Recreate"));
            }
        }
        for (field, v) in
            [("rolling_update.max_surge", &r.max_surge), ("rolling_update.max_unavailable", &r.max_unavailable)]
        {
            match v {
                Some(IntOrPercent::Int(n)) if *n < 0 => return Err(bad(field, "must not be negative")),
                Some(IntOrPercent::Percent(p)) => {
                    let ok = p.strip_suffix('%').and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| n <= 100);
                    if !ok {
                        return Err(bad(field, format!("'{p}' is not a count or a percentage like 25%")));
                    }
                }
                _ => {}
            }
        }
    }
    for (i, d) in s.devices.iter().enumerate() {
        if !d.starts_with("/dev/") {
            return Err(bad(&format!("devices[{i}]"), "a host device path under /dev/"));
        }
    }
    for k in s.env.keys() {
        let ok = !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !ok {
            return Err(bad(&format!("env.{k}"), "not a valid environment variable name"));
        }
    }
    if let Some(r) = &s.resources {
        let typed: Result<k8s_openapi::api::core::v1::ResourceRequirements, _> = serde_json::from_value(r.clone());
        typed.map_err(|e| bad("resources", e.to_string()))?;
        for kind in ["requests", "limits"] {
            for (k, v) in r.get(kind).and_then(Value::as_object).into_iter().flatten() {
                quantity(v.as_str().unwrap_or("")).map_err(|m| bad(&format!("resources.{kind}.{k}"), m))?;
            }
        }
    }
    for (i, t) in s.tolerations.iter().enumerate() {
        roundtrip::<k8s_openapi::api::core::v1::Toleration>(t).map_err(|m| bad(&format!("tolerations[{i}]"), m))?;
    }
    if let Some(o) = &s.observability {
        if o.metrics_path.as_deref().is_some_and(|p| !p.starts_with('/')) {
            return Err(bad("observability.metrics_path", "an absolute path"));
        }
    }
    let overlays = ["application", "ros_master", "discovery_server"];
    if per_object(s) {
        for (k, v) in &s.additional_k8s_params {
            if !v.is_object() {
                return Err(bad(&format!("additional_k8s_params.{k}"), "an object to merge"));
            }
        }
    } else if s.additional_k8s_params.keys().any(|k| overlays.contains(&k.as_str())) {
        return Err(bad(
            "additional_k8s_params",
            "either only the keys application, ros_master, discovery_server, or fields of the application Deployment",
        ));
    }
    Ok(())
}

/// `additional_k8s_params` given per object (`application`, `ros_master`, …).
fn per_object(s: &AppSpec) -> bool {
    let overlays = ["application", "ros_master", "discovery_server"];
    !s.additional_k8s_params.is_empty() && s.additional_k8s_params.keys().all(|k| overlays.contains(&k.as_str()))
}

/// Checks `v` against a k8s-openapi type: a field the type does not know
/// (a typo) would be dropped by the round trip, so it is named instead.
fn roundtrip<T: serde::de::DeserializeOwned + Serialize>(v: &Value) -> Result<(), String> {
    let typed: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    match first_unknown(v, &back, String::new()) {
        Some(path) => Err(format!("unknown field {path}")),
        None => Ok(()),
    }
}

/// The first path present in `given` but absent from `known`.
fn first_unknown(given: &Value, known: &Value, path: String) -> Option<String> {
    match (given, known) {
        (Value::Object(g), Value::Object(k)) => g.iter().find_map(|(key, v)| match k.get(key) {
            None if !v.is_null() => Some(format!("{path}.{key}")),
            None => None,
            Some(kv) => first_unknown(v, kv, format!("{path}.{key}")),
        }),
        (Value::Array(g), Value::Array(k)) => {
            g.iter().zip(k).enumerate().find_map(|(i, (a, b))| first_unknown(a, b, format!("{path}[{i}]")))
        }
        _ => None,
    }
}

impl AppSpec {
    /// 1 or 2.
    pub fn ros(&self) -> u8 {
        if let Some(v) = self.ros_version {
            return v;
        }
        match self.distro.as_deref().map(str::to_lowercase).as_deref() {
            Some("noetic" | "melodic" | "kinetic" | "lunar" | "indigo") => 1,
            Some(_) => 2,
            None => {
                if self.discovery_server.as_ref().is_some_and(|d| d.enabled) {
                    2
                } else {
                    1
                }
            }
        }
    }

    /// Whether a ROS 1 master is deployed (Rigel's default: yes, for ROS 1).
    pub fn with_master(&self) -> bool {
        self.deploy_ros_master.unwrap_or(true) && self.ros() == 1
    }

    fn with_discovery(&self) -> bool {
        self.ros() == 2 && self.discovery_server.as_ref().is_some_and(|d| d.enabled)
    }

    /// The version it is: `version`, else the image's tag or digest.
    pub fn app_version(&self) -> String {
        self.version.clone().unwrap_or_else(|| crate::cluster::image_version(&self.image))
    }

    fn labels(&self, component: &str) -> Value {
        json!({
            "app.kubernetes.io/name": self.name,
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/part-of": self.name,
            "app.kubernetes.io/managed-by": "otafleet",
            "app.kubernetes.io/version": label_safe(&self.app_version()),
            APP_LABEL: self.name,
        })
    }

    fn meta(&self, name: &str, component: &str) -> Value {
        json!({"name": name, "namespace": self.namespace, "labels": self.labels(component)})
    }
}

/// A label value from a version (at most 63 of `[A-Za-z0-9._-]`).
fn label_safe(v: &str) -> String {
    let s: String = v.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    s.chars().take(63).collect::<String>().trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string()
}

/// The objects that run the app, in apply order (masters and claims first).
pub fn render(s: &AppSpec) -> Result<Vec<Value>, SpecError> {
    let mut out = Vec::new();
    let mut app_env: Vec<Value> = Vec::new();
    let overlay = |key: &str| -> Option<&Value> {
        if per_object(s) {
            s.additional_k8s_params.get(key)
        } else {
            None
        }
    };
    if s.with_master() {
        let image = s
            .ros_master_image
            .clone()
            .unwrap_or_else(|| format!("ros:{}-ros-core", s.distro.as_deref().unwrap_or("noetic").to_lowercase()));
        let selector = json!({"app": ROS_MASTER, APP_LABEL: s.name});
        let mut meta = s.meta(ROS_MASTER, "ros-master");
        meta["labels"]["app"] = json!(ROS_MASTER);
        let mut deployment = json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
            "spec": {"replicas": 1, "selector": {"matchLabels": selector},
                "template": {"metadata": {"labels": selector}, "spec": {"containers": [{
                    "name": ROS_MASTER, "image": image, "command": ["roscore"],
                    "ports": [{"name": "ros-master", "containerPort": 11311}],
                    "readinessProbe": {"tcpSocket": {"port": 11311}, "periodSeconds": 5}}]}}}});
        if let Some(o) = overlay("ros_master") {
            merge::merge(&mut deployment, o);
        }
        out.push(json!({"apiVersion": "v1", "kind": "Service", "metadata": s.meta(ROS_MASTER, "ros-master"),
            "spec": {"selector": selector, "ports": [{"name": "ros-master", "port": 11311, "targetPort": 11311}]}}));
        out.push(deployment);
        app_env.push(json!({"name": "ROS_MASTER_URI", "value": format!("http://{ROS_MASTER}:11311")}));
    }
    if s.with_discovery() {
        let d = s.discovery_server.as_ref().expect("with_discovery");
        let selector = json!({"app": DISCOVERY_SERVER, APP_LABEL: s.name});
        let mut deployment = json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": s.meta(DISCOVERY_SERVER, "discovery-server"),
            "spec": {"replicas": 1, "selector": {"matchLabels": selector},
                "template": {"metadata": {"labels": selector}, "spec": {"containers": [{
                    "name": "discovery-server", "image": d.image.clone().unwrap_or_else(|| s.image.clone()),
                    "command": ["fastdds", "discovery", "--server-id", "0", "--port", d.port.to_string()],
                    "ports": [{"name": "discovery", "containerPort": d.port, "protocol": "UDP"}]}]}}}});
        if let Some(o) = overlay("discovery_server") {
            merge::merge(&mut deployment, o);
        }
        out.push(
            json!({"apiVersion": "v1", "kind": "Service", "metadata": s.meta(DISCOVERY_SERVER, "discovery-server"),
            "spec": {"clusterIP": "None", "selector": selector,
                "ports": [{"name": "discovery", "port": d.port, "protocol": "UDP"}]}}),
        );
        out.push(deployment);
        app_env.push(json!({"name": "ROS_DISCOVERY_SERVER", "value": format!("{DISCOVERY_SERVER}:{}", d.port)}));
        app_env.push(json!({"name": "RMW_IMPLEMENTATION", "value": "rmw_fastrtps_cpp"}));
        app_env.push(json!({"name": "FASTDDS_BUILTIN_TRANSPORTS", "value": "UDPv4"}));
    }
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    for v in s.persistent_storage.iter().flat_map(|p| &p.volumes) {
        let claim = format!("{}-pvc", v.name);
        let mut spec = json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": v.size}}});
        if let Some(c) = &v.storage_class {
            spec["storageClassName"] = json!(c);
        }
        out.push(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": s.meta(&claim, "storage"),
            "spec": spec}));
        volumes.push(json!({"name": v.name, "persistentVolumeClaim": {"claimName": claim}}));
        let path = v.mount_path.clone().unwrap_or_else(|| format!("/data/{}", v.name));
        mounts.push(json!({"name": v.name, "mountPath": path}));
    }
    for (i, d) in s.devices.iter().enumerate() {
        let name = format!("device-{i}");
        volumes.push(json!({"name": name, "hostPath": {"path": d}}));
        mounts.push(json!({"name": name, "mountPath": d}));
    }
    for (k, v) in &s.env {
        app_env.push(json!({"name": k, "value": v}));
    }
    let mut container = json!({"name": APP_CONTAINER, "image": s.image});
    let mut init = Vec::new();
    if let Some(r) = &s.readiness {
        volumes.push(json!({"name": "readiness", "emptyDir": {}}));
        mounts.push(json!({"name": "readiness", "mountPath": "/readiness"}));
        init.push(json!({"name": READINESS_INIT, "image": s.image,
            "command": ["sh", "-c", "mkdir -p /readiness && touch /readiness/initialized"],
            "volumeMounts": [{"name": "readiness", "mountPath": "/readiness"}]}));
        container["readinessProbe"] = json!({
            "exec": {"command": ["sh", "-c", format!("test -f /readiness/initialized && {}", r.command)]},
            "periodSeconds": 5, "failureThreshold": 3});
    }
    if !app_env.is_empty() {
        container["env"] = json!(app_env);
    }
    if !mounts.is_empty() {
        container["volumeMounts"] = json!(mounts);
    }
    if let Some(r) = &s.resources {
        container["resources"] = r.clone();
    }
    if !s.devices.is_empty() {
        container["securityContext"] = json!({"privileged": true});
    }
    let obs = s.observability.as_ref().filter(|o| o.enabled);
    if let Some(o) = obs {
        container["ports"] = json!([{"name": "metrics", "containerPort": o.metrics_port.unwrap_or(9090)}]);
    }
    let selector = json!({"app": s.name});
    let mut pod_labels = s.labels("application");
    pod_labels["app"] = json!(s.name);
    pod_labels["sw_version"] = json!(label_safe(&s.app_version()));
    let mut pod_meta = json!({"labels": pod_labels});
    if let Some(o) = obs {
        pod_labels_for_logs(&mut pod_meta);
        pod_meta["annotations"] = json!({"prometheus.io/scrape": "true",
            "prometheus.io/port": o.metrics_port.unwrap_or(9090).to_string(),
            "prometheus.io/path": o.metrics_path.clone().unwrap_or_else(|| "/metrics".into())});
    }
    let mut pod = json!({"containers": [container]});
    if !init.is_empty() {
        pod["initContainers"] = json!(init);
    }
    if !volumes.is_empty() {
        pod["volumes"] = json!(volumes);
    }
    if !s.node_selector.is_empty() {
        pod["nodeSelector"] = json!(s.node_selector);
    }
    if !s.tolerations.is_empty() {
        pod["tolerations"] = json!(s.tolerations);
    }
    if s.host_network {
        pod["hostNetwork"] = json!(true);
        pod["dnsPolicy"] = json!("ClusterFirstWithHostNet");
    }
    let strategy = match &s.rolling_update {
        Some(r) if r.strategy.as_deref() == Some("Recreate") => json!({"type": "Recreate"}),
        Some(r) => {
            let v = |x: &Option<IntOrPercent>, d: i64| match x {
                Some(IntOrPercent::Int(n)) => json!(n),
                Some(IntOrPercent::Percent(p)) => json!(p),
                None => json!(d),
            };
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": v(&r.max_surge, 1), "maxUnavailable": v(&r.max_unavailable, 0)}})
        }
        None => json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}),
    };
    let mut meta = s.meta(&s.name, "application");
    meta["labels"]["app"] = json!(s.name);
    meta["labels"]["sw_version"] = json!(label_safe(&s.app_version()));
    let mut app = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
        "spec": {"replicas": s.replicas, "selector": {"matchLabels": selector}, "strategy": strategy,
            "template": {"metadata": pod_meta, "spec": pod}}});
    if per_object(s) {
        if let Some(o) = overlay("application") {
            merge::merge(&mut app, o);
        }
    } else if !s.additional_k8s_params.is_empty() {
        merge::merge(&mut app, &Value::Object(s.additional_k8s_params.clone()));
    }
    out.push(app);
    for (i, o) in out.iter().enumerate() {
        let kind = o["kind"].as_str().unwrap_or_default();
        let checked = match kind {
            "Deployment" => roundtrip::<Deployment>(o),
            "Service" => roundtrip::<Service>(o),
            _ => roundtrip::<PersistentVolumeClaim>(o),
        };
        checked.map_err(|m| {
            let name = o.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("?");
            bad(
                "additional_k8s_params",
                format!("the rendered {kind} {name} (object {i}) is not valid Kubernetes: {m}"),
            )
        })?;
    }
    Ok(out)
}

/// With observability: the label a log collector (Promtail, Alloy) keeps pods by.
fn pod_labels_for_logs(meta: &mut Value) {
    meta["labels"]["otafleet.io/logs"] = json!("loki");
}

/// The rendered objects as one YAML stream.
pub fn to_yaml(objects: &[Value]) -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(o)?);
    }
    Ok(out)
}
