//! An in-process fake Kubernetes API server for tests.
//!
//! It speaks the real HTTP/JSON protocol for the verbs this crate (and
//! `kube-runtime`) use, so the code under test runs unchanged through a real
//! `kube::Client` built from a generated kubeconfig file:
//!
//! * list (label and `metadata.name`/`metadata.namespace` field selectors,
//!   `PartialObjectMetadataList`), get, create (uid, resourceVersion,
//!   creationTimestamp, generation, `generateName`), replace, patch (merge,
//!   strategic-merge treated as merge, apply treated as merge, JSON patch),
//!   delete (finalizers set `deletionTimestamp`; removing the last finalizer
//!   deletes), the `status` subresource, and watch (`?watch=true`) streaming
//!   newline-delimited `WatchEvent`s from any resourceVersion;
//! * resourceVersion preconditions on replace/patch answer 409 `Conflict`;
//! * fault injection ([`FakeApiServer::fail_next`]) and a request log
//!   ([`FakeApiServer::requests`]) so tests assert which calls were made;
//! * optional behaviour standing in for the kubelet and workload controllers:
//!   new pods can be moved to a phase at once, and Deployments/StatefulSets/
//!   DaemonSets report a finished rollout when their spec changes.
//!
//! Resources are untyped: any `apiVersion`/plural is accepted, which is what lets
//! the same server hold FlashJobs, Akri Instances, Pods, Leases and Events.
//! Not modelled: admission, validation, garbage collection of owned objects,
//! pagination (`limit` is ignored), and bookmarks.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use kube::Resource;
use otafleet_core::selector::Labels;
use otafleet_core::Selector;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

/// One request as the fake server saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// URL path.
    pub path: String,
    /// Decoded query string.
    pub query: String,
    /// Whether this was a watch.
    pub watch: bool,
    /// Status code answered (200 for watches that started streaming).
    pub status: u16,
}

impl std::fmt::Display for RequestRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)?;
        if !self.query.is_empty() {
            write!(f, "?{}", self.query)?;
        }
        write!(f, " -> {}", self.status)
    }
}

#[derive(Clone, Debug)]
struct Fault {
    method: Option<String>,
    path_contains: String,
    status: u16,
    remaining: usize,
}

#[derive(Clone, Debug, Default)]
struct Behaviour {
    pod_phase_on_create: Option<String>,
    simulate_rollouts: bool,
    /// Images (by substring) that never become ready, with the kubelet's reason.
    failing_images: Vec<(String, String)>,
}

impl Behaviour {
    /// The reason a container of `obj` (at `containers`) never becomes ready, if any.
    fn failing(&self, obj: &Value, containers: &str) -> Option<(String, String)> {
        let list = obj.pointer(containers)?.as_array()?;
        list.iter().find_map(|c| {
            let image = c.get("image")?.as_str()?;
            let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
            self.failing_images
                .iter()
                .find(|(i, _)| image.contains(i.as_str()))
                .map(|(_, r)| (name.to_string(), r.clone()))
        })
    }
}

#[derive(Clone, Debug)]
struct WatchRecord {
    key: String,
    ns: String,
    type_: &'static str,
    object: Value,
    rv: u64,
}

#[derive(Default)]
struct Store {
    rv: u64,
    seq: u64,
    objects: HashMap<String, BTreeMap<(String, String), Value>>,
    kinds: HashMap<String, String>,
    history: Vec<WatchRecord>,
}

struct Shared {
    store: Mutex<Store>,
    events: broadcast::Sender<WatchRecord>,
    log: Mutex<Vec<RequestRecord>>,
    faults: Mutex<Vec<Fault>>,
    behaviour: Mutex<Behaviour>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running fake API server; stops when dropped.
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    kubeconfig: tempfile::NamedTempFile,
    task: JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An API error answered as a Kubernetes `Status` object.
#[derive(Debug)]
struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
}

impl ApiError {
    fn new(code: u16, message: impl Into<String>) -> Self {
        let reason = match code {
            400 => "BadRequest",
            404 => "NotFound",
            405 => "MethodNotAllowed",
            409 => "Conflict",
            422 => "Invalid",
            429 => "TooManyRequests",
            503 => "ServiceUnavailable",
            _ => "InternalError",
        };
        Self { code, reason, message: message.into() }
    }

    fn already_exists(name: &str) -> Self {
        Self { code: 409, reason: "AlreadyExists", message: format!("object \"{name}\" already exists") }
    }

    fn body(&self) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message,
            "reason": self.reason, "code": self.code,
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, axum::Json(self.body())).into_response()
    }
}

/// Where a request points.
#[derive(Clone, Debug)]
struct Target {
    key: String,
    api_version: String,
    plural: String,
    ns: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_target(path: &str) -> Option<Target> {
    let seg: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (api_version, rest) = match *seg.first()? {
        "api" => (seg.get(1)?.to_string(), &seg[2..]),
        "apis" => (format!("{}/{}", seg.get(1)?, seg.get(2)?), &seg[3..]),
        _ => return None,
    };
    let (ns, rest) = if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        (Some(rest[1].to_string()), &rest[2..])
    } else {
        (None, rest)
    };
    let plural = rest.first()?.to_string();
    Some(Target {
        key: format!("{api_version}/{plural}"),
        api_version,
        plural,
        ns,
        name: rest.get(1).map(|s| s.to_string()),
        status: rest.get(2) == Some(&"status"),
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Parses a `labelSelector` query parameter with the core's parser (the one
/// the server matches devices with); a selector it rejects is a 400, as on a
/// real API server.
fn parse_selector(sel: &str) -> Result<Selector, ApiError> {
    Selector::parse(sel).map_err(|e| ApiError::new(400, format!("unable to parse requirement: {e}")))
}

fn labels_match(obj: &Value, selector: &Selector) -> bool {
    if selector.is_empty() {
        return true;
    }
    let labels: Labels = obj
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|l| l.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default();
    selector.matches(&labels)
}

/// `metadata.name=x,metadata.namespace!=y`: field selectors, `=`/`==`/`!=` only.
fn fields_match(obj: &Value, sel: &str) -> bool {
    sel.split(',').map(str::trim).filter(|t| !t.is_empty()).all(|t| {
        let (k, v, eq) = if let Some((k, v)) = t.split_once("!=") {
            (k, v, false)
        } else if let Some((k, v)) = t.split_once('=') {
            (k, v.trim_start_matches('='), true)
        } else {
            return true;
        };
        let actual = obj.pointer(&format!("/{}", k.trim().replace('.', "/"))).and_then(Value::as_str).unwrap_or("");
        (actual == v.trim()) == eq
    })
}

fn meta_str(obj: &Value, field: &str) -> Option<String> {
    obj.pointer(&format!("/metadata/{field}")).and_then(Value::as_str).map(str::to_string)
}

fn set_meta(obj: &mut Value, field: &str, value: Value) {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"][field] = value;
}

fn now_rfc3339() -> String {
    k8s_openapi::chrono::Utc::now().to_rfc3339_opts(k8s_openapi::chrono::SecondsFormat::Secs, true)
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Everything but metadata and status: a change here bumps `metadata.generation`.
fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("metadata");
        o.remove("status");
    }
    v
}

fn without_rv(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    v
}

fn has_finalizers(obj: &Value) -> bool {
    obj.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty())
}

/// Stands in for the Deployment/StatefulSet/DaemonSet controllers: the rollout
/// is done, or (an image of [`FakeApiServer::set_failing_image`]) its pods
/// never become ready and a Deployment reports `ProgressDeadlineExceeded`.
fn finish_rollout(plural: &str, obj: &mut Value, b: &Behaviour) {
    let generation = obj.pointer("/metadata/generation").cloned().unwrap_or(json!(1));
    let replicas = obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
    let failing = b.failing(obj, "/spec/template/spec/containers");
    let ready = if failing.is_some() { 0 } else { replicas };
    obj["status"] = match plural {
        "deployments" => {
            let mut status = json!({
                "observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas,
                "readyReplicas": ready, "availableReplicas": ready,
            });
            if let Some((container, reason)) = failing {
                status["unavailableReplicas"] = json!(replicas);
                status["conditions"] = json!([{"type": "Progressing", "status": "False",
                    "reason": "ProgressDeadlineExceeded",
                    "message": format!("ReplicaSet has timed out progressing: container {container}: {reason}")}]);
            }
            status
        }
        "statefulsets" => json!({
            "observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas,
            "readyReplicas": ready, "availableReplicas": ready, "currentReplicas": replicas,
            "currentRevision": format!("rev-{generation}"), "updateRevision": format!("rev-{generation}"),
        }),
        _ => json!({
            "observedGeneration": generation, "desiredNumberScheduled": 3, "currentNumberScheduled": 3,
            "updatedNumberScheduled": 3, "numberReady": if ready > 0 { 3 } else { 0 },
            "numberAvailable": if ready > 0 { 3 } else { 0 }, "numberMisscheduled": 0,
        }),
    };
}

/// Stands in for the kubelet when a pod's containers change: it runs them,
/// ready, or one of them waits with the reason of a failing image.
fn run_pod(obj: &mut Value, b: &Behaviour) {
    let containers = obj.pointer("/spec/containers").and_then(Value::as_array).cloned().unwrap_or_default();
    let failing = b.failing(obj, "/spec/containers");
    let statuses: Vec<Value> = containers
        .iter()
        .map(|c| {
            let name = c.get("name").cloned().unwrap_or(json!(""));
            let image = c.get("image").cloned().unwrap_or(json!(""));
            match &failing {
                Some((n, reason)) if Some(n.as_str()) == name.as_str() => json!({"name": name, "image": image,
                    "ready": false, "restartCount": 0,
                    "state": {"waiting": {"reason": reason, "message": format!("{reason} for image {image}")}}}),
                _ => json!({"name": name, "image": image, "ready": true, "restartCount": 0,
                    "state": {"running": {"startedAt": now_rfc3339()}}}),
            }
        })
        .collect();
    let ready = if failing.is_some() { "False" } else { "True" };
    obj["status"] = json!({"phase": "Running", "containerStatuses": statuses,
        "conditions": [{"type": "Ready", "status": ready}]});
}

fn is_workload(key: &str) -> Option<&str> {
    ["deployments", "statefulsets", "daemonsets"].into_iter().find(|p| key == format!("apps/v1/{p}"))
}

fn default_kind(plural: &str) -> String {
    let known = [
        ("pods", "Pod"),
        ("services", "Service"),
        ("events", "Event"),
        ("leases", "Lease"),
        ("deployments", "Deployment"),
        ("statefulsets", "StatefulSet"),
        ("daemonsets", "DaemonSet"),
        ("flashjobs", "FlashJob"),
        ("instances", "Instance"),
        ("configmaps", "ConfigMap"),
        ("namespaces", "Namespace"),
    ];
    known.iter().find(|(p, _)| *p == plural).map(|(_, k)| k.to_string()).unwrap_or_else(|| "Unknown".into())
}

impl Store {
    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn record(
        &mut self,
        tx: &broadcast::Sender<WatchRecord>,
        key: &str,
        ns: &str,
        type_: &'static str,
        object: &Value,
    ) {
        let rec = WatchRecord { key: key.to_string(), ns: ns.to_string(), type_, object: object.clone(), rv: self.rv };
        self.history.push(rec.clone());
        let _ = tx.send(rec);
    }

    fn get(&self, t: &Target, name: &str) -> Option<&Value> {
        let ns = t.ns.clone().unwrap_or_default();
        self.objects.get(&t.key)?.get(&(ns, name.to_string()))
    }

    fn create(
        &mut self,
        tx: &broadcast::Sender<WatchRecord>,
        b: &Behaviour,
        t: &Target,
        mut obj: Value,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::new(400, "body must be an object"));
        }
        let ns = t.ns.clone().unwrap_or_default();
        let name = match meta_str(&obj, "name") {
            Some(n) => n,
            None => match meta_str(&obj, "generateName") {
                Some(prefix) => {
                    self.seq += 1;
                    format!("{prefix}{:05x}", self.seq)
                }
                None => return Err(ApiError::new(422, "metadata.name: Required value")),
            },
        };
        let kind = obj.get("kind").and_then(Value::as_str).map(str::to_string);
        let kind = kind.unwrap_or_else(|| self.kinds.get(&t.key).cloned().unwrap_or_else(|| default_kind(&t.plural)));
        self.kinds.insert(t.key.clone(), kind.clone());
        let coll = self.objects.entry(t.key.clone()).or_default();
        if coll.contains_key(&(ns.clone(), name.clone())) {
            return Err(ApiError::already_exists(&name));
        }
        self.seq += 1;
        let seq = self.seq;
        obj["apiVersion"] = json!(t.api_version);
        obj["kind"] = json!(kind);
        set_meta(&mut obj, "name", json!(name));
        if t.ns.is_some() {
            set_meta(&mut obj, "namespace", json!(ns));
        }
        if meta_str(&obj, "uid").is_none() {
            set_meta(&mut obj, "uid", json!(format!("{seq:08x}-0000-4000-8000-{seq:012x}")));
        }
        set_meta(&mut obj, "creationTimestamp", json!(now_rfc3339()));
        set_meta(&mut obj, "generation", json!(1));
        if t.key == "v1/pods" && obj.pointer("/status/phase").is_none() {
            obj["status"] = json!({"phase": "Pending"});
        }
        if let Some(plural) = is_workload(&t.key) {
            if b.simulate_rollouts {
                finish_rollout(plural, &mut obj, b);
            }
        }
        let rv = self.next_rv();
        set_meta(&mut obj, "resourceVersion", json!(rv.to_string()));
        self.objects.entry(t.key.clone()).or_default().insert((ns.clone(), name.clone()), obj.clone());
        self.record(tx, &t.key, &ns, "ADDED", &obj);
        if t.key == "v1/pods" {
            if let Some(phase) = &b.pod_phase_on_create {
                let mut next = obj.clone();
                next["status"]["phase"] = json!(phase);
                self.commit(tx, b, t, &name, &obj, next, true)?;
            }
        }
        Ok(obj)
    }

    /// Stores `next` as the new version of `old` (`status_only` for the subresource).
    #[allow(clippy::too_many_arguments)]
    fn commit(
        &mut self,
        tx: &broadcast::Sender<WatchRecord>,
        b: &Behaviour,
        t: &Target,
        name: &str,
        old: &Value,
        next: Value,
        status_only: bool,
    ) -> Result<Value, ApiError> {
        let old_rv = meta_str(old, "resourceVersion");
        if let Some(rv) = meta_str(&next, "resourceVersion") {
            if Some(&rv) != old_rv.as_ref() {
                return Err(ApiError::new(
                    409,
                    format!("Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again", t.plural),
                ));
            }
        }
        let mut obj = if status_only {
            let mut o = old.clone();
            match next.get("status") {
                Some(s) => o["status"] = s.clone(),
                None => {
                    if let Some(m) = o.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            o
        } else {
            let mut n = next;
            match old.get("status") {
                Some(s) => n["status"] = s.clone(),
                None => {
                    if let Some(m) = n.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            for field in ["uid", "creationTimestamp", "name", "namespace", "generation", "deletionTimestamp"] {
                match old.pointer(&format!("/metadata/{field}")) {
                    Some(v) => set_meta(&mut n, field, v.clone()),
                    None => {
                        if let Some(m) = n.get_mut("metadata").and_then(Value::as_object_mut) {
                            m.remove(field);
                        }
                    }
                }
            }
            n["apiVersion"] = old["apiVersion"].clone();
            n["kind"] = old["kind"].clone();
            n
        };
        if without_rv(&obj) == without_rv(old) {
            return Ok(old.clone());
        }
        if spec_part(&obj) != spec_part(old) {
            let generation = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
            set_meta(&mut obj, "generation", json!(generation + 1));
            if let Some(plural) = is_workload(&t.key) {
                if b.simulate_rollouts {
                    finish_rollout(plural, &mut obj, b);
                }
            }
            let containers = |o: &Value| o.pointer("/spec/containers").cloned();
            if t.key == "v1/pods" && b.simulate_rollouts && containers(&obj) != containers(old) {
                run_pod(&mut obj, b);
            }
        }
        let ns = t.ns.clone().unwrap_or_default();
        let rv = self.next_rv();
        set_meta(&mut obj, "resourceVersion", json!(rv.to_string()));
        let key = (ns.clone(), name.to_string());
        if obj.pointer("/metadata/deletionTimestamp").is_some() && !has_finalizers(&obj) {
            if let Some(c) = self.objects.get_mut(&t.key) {
                c.remove(&key);
            }
            self.record(tx, &t.key, &ns, "DELETED", &obj);
        } else {
            self.objects.entry(t.key.clone()).or_default().insert(key, obj.clone());
            self.record(tx, &t.key, &ns, "MODIFIED", &obj);
        }
        Ok(obj)
    }

    fn delete(&mut self, tx: &broadcast::Sender<WatchRecord>, t: &Target, name: &str) -> Result<Value, ApiError> {
        let ns = t.ns.clone().unwrap_or_default();
        let key = (ns.clone(), name.to_string());
        let Some(old) = self.objects.get(&t.key).and_then(|c| c.get(&key)).cloned() else {
            return Err(ApiError::new(404, format!("{} \"{name}\" not found", t.plural)));
        };
        let rv = self.next_rv();
        let mut obj = old;
        set_meta(&mut obj, "resourceVersion", json!(rv.to_string()));
        if has_finalizers(&obj) {
            if obj.pointer("/metadata/deletionTimestamp").is_none() {
                set_meta(&mut obj, "deletionTimestamp", json!(now_rfc3339()));
                set_meta(&mut obj, "deletionGracePeriodSeconds", json!(0));
                self.objects.entry(t.key.clone()).or_default().insert(key, obj.clone());
                self.record(tx, &t.key, &ns, "MODIFIED", &obj);
            }
        } else {
            if let Some(c) = self.objects.get_mut(&t.key) {
                c.remove(&key);
            }
            self.record(tx, &t.key, &ns, "DELETED", &obj);
        }
        Ok(obj)
    }

    fn list(&self, t: &Target, labels: &Selector, fields: &str) -> Vec<Value> {
        let Some(coll) = self.objects.get(&t.key) else {
            return Vec::new();
        };
        coll.iter()
            .filter(|((ns, _), _)| t.ns.as_ref().is_none_or(|want| want == ns))
            .map(|(_, v)| v)
            .filter(|v| labels_match(v, labels) && fields_match(v, fields))
            .cloned()
            .collect()
    }
}

fn apply_patch(old: &Value, content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    let mut doc = old.clone();
    if content_type.starts_with("application/json-patch+json") {
        let ops: Vec<Value> = serde_json::from_slice(body).map_err(|e| ApiError::new(400, e.to_string()))?;
        // Like the real API server, `test` of null passes for a missing path.
        let mut kept = Vec::new();
        for op in ops {
            let is_null_test = op.get("op") == Some(&json!("test")) && op.get("value") == Some(&Value::Null);
            if is_null_test {
                let path = op.get("path").and_then(Value::as_str).unwrap_or("");
                if doc.pointer(path).is_some_and(|v| !v.is_null()) {
                    return Err(ApiError::new(422, format!("test operation failed at {path}")));
                }
                continue;
            }
            kept.push(op);
        }
        let patch: json_patch::Patch =
            serde_json::from_value(Value::Array(kept)).map_err(|e| ApiError::new(400, e.to_string()))?;
        json_patch::patch(&mut doc, &patch).map_err(|e| ApiError::new(422, e.to_string()))?;
    } else if content_type.starts_with("application/apply-patch+yaml") {
        let patch: Value = serde_yaml::from_slice(body).map_err(|e| ApiError::new(400, e.to_string()))?;
        merge(&mut doc, &patch);
    } else {
        let patch: Value = serde_json::from_slice(body).map_err(|e| ApiError::new(400, e.to_string()))?;
        merge(&mut doc, &patch);
    }
    Ok(doc)
}

impl Shared {
    fn take_fault(&self, method: &Method, path: &str) -> Option<u16> {
        let mut faults = lock(&self.faults);
        let idx = faults.iter().position(|f| {
            f.method.as_deref().is_none_or(|m| m.eq_ignore_ascii_case(method.as_str()))
                && path.contains(&f.path_contains)
        })?;
        let status = faults[idx].status;
        faults[idx].remaining -= 1;
        if faults[idx].remaining == 0 {
            faults.remove(idx);
        }
        Some(status)
    }

    fn log(&self, method: &Method, path: &str, query: &str, watch: bool, status: u16) {
        lock(&self.log).push(RequestRecord {
            method: method.to_string(),
            path: path.to_string(),
            query: percent_decode(query),
            watch,
            status,
        });
    }
}

async fn handle(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let raw_query = uri.query().unwrap_or("").to_string();
    let query = parse_query(&raw_query);
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    if !watch {
        if let Some(code) = shared.take_fault(&method, &path) {
            shared.log(&method, &path, &raw_query, false, code);
            return ApiError::new(code, "injected fault").into_response();
        }
    }
    let Some(target) = parse_target(&path) else {
        shared.log(&method, &path, &raw_query, watch, 404);
        return ApiError::new(404, format!("no route for {path}")).into_response();
    };
    if watch {
        let selector = match parse_selector(query.get("labelSelector").map(String::as_str).unwrap_or("")) {
            Ok(s) => s,
            Err(e) => {
                shared.log(&method, &path, &raw_query, true, e.code);
                return e.into_response();
            }
        };
        shared.log(&method, &path, &raw_query, true, 200);
        return watch_response(shared, target, selector, query);
    }
    let accept = headers.get("accept").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let content_type =
        headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("application/json").to_string();
    let result = dispatch(&shared, &method, &target, &query, &accept, &content_type, &body);
    let (code, value) = match result {
        Ok((code, v)) => (code, v),
        Err(e) => (e.code, e.body()),
    };
    shared.log(&method, &path, &raw_query, false, code);
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(value)).into_response()
}

fn partial(obj: &Value) -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadata",
        "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
    })
}

fn dispatch(
    shared: &Shared,
    method: &Method,
    t: &Target,
    query: &HashMap<String, String>,
    accept: &str,
    content_type: &str,
    body: &[u8],
) -> Result<(u16, Value), ApiError> {
    let behaviour = lock(&shared.behaviour).clone();
    let tx = &shared.events;
    let mut store = lock(&shared.store);
    let metadata_only = accept.contains("as=PartialObjectMetadata");
    match (method.as_str(), &t.name) {
        ("GET", None) => {
            let labels = parse_selector(query.get("labelSelector").map(String::as_str).unwrap_or(""))?;
            let fields = query.get("fieldSelector").cloned().unwrap_or_default();
            let mut items = store.list(t, &labels, &fields);
            let kind = store.kinds.get(&t.key).cloned().unwrap_or_else(|| default_kind(&t.plural));
            let (api_version, kind) = if metadata_only {
                items = items.iter().map(partial).collect();
                ("meta.k8s.io/v1".to_string(), "PartialObjectMetadataList".to_string())
            } else {
                (t.api_version.clone(), format!("{kind}List"))
            };
            Ok((
                200,
                json!({
                    "apiVersion": api_version, "kind": kind,
                    "metadata": {"resourceVersion": store.rv.to_string()},
                    "items": items,
                }),
            ))
        }
        ("GET", Some(name)) => {
            let obj = store
                .get(t, name)
                .cloned()
                .ok_or_else(|| ApiError::new(404, format!("{} \"{name}\" not found", t.plural)))?;
            Ok((200, if metadata_only { partial(&obj) } else { obj }))
        }
        ("POST", None) => {
            let obj: Value = serde_json::from_slice(body).map_err(|e| ApiError::new(400, e.to_string()))?;
            Ok((201, store.create(tx, &behaviour, t, obj)?))
        }
        ("PUT", Some(name)) => {
            let next: Value = serde_json::from_slice(body).map_err(|e| ApiError::new(400, e.to_string()))?;
            let old = store
                .get(t, name)
                .cloned()
                .ok_or_else(|| ApiError::new(404, format!("{} \"{name}\" not found", t.plural)))?;
            Ok((200, store.commit(tx, &behaviour, t, name, &old, next, t.status)?))
        }
        ("PATCH", Some(name)) => {
            let Some(old) = store.get(t, name).cloned() else {
                if content_type.starts_with("application/apply-patch+yaml") && !t.status {
                    let obj: Value = serde_yaml::from_slice(body).map_err(|e| ApiError::new(400, e.to_string()))?;
                    return Ok((201, store.create(tx, &behaviour, t, obj)?));
                }
                return Err(ApiError::new(404, format!("{} \"{name}\" not found", t.plural)));
            };
            let next = apply_patch(&old, content_type, body)?;
            Ok((200, store.commit(tx, &behaviour, t, name, &old, next, t.status)?))
        }
        ("DELETE", Some(name)) => Ok((200, store.delete(tx, t, name)?)),
        _ => Err(ApiError::new(405, format!("{method} not supported on {}", t.key))),
    }
}

fn watch_response(shared: Arc<Shared>, t: Target, labels: Selector, query: HashMap<String, String>) -> Response {
    let fields = query.get("fieldSelector").cloned().unwrap_or_default();
    let since: Option<u64> = query.get("resourceVersion").and_then(|rv| rv.parse().ok()).filter(|rv| *rv > 0);
    let timeout = query.get("timeoutSeconds").and_then(|s| s.parse::<u64>().ok()).unwrap_or(290).min(290);
    let (tx, rx) = mpsc::channel::<Bytes>(1024);
    let matches = {
        let t = t.clone();
        move |key: &str, ns: &str, obj: &Value| {
            key == t.key
                && t.ns.as_ref().is_none_or(|want| want == ns)
                && labels_match(obj, &labels)
                && fields_match(obj, &fields)
        }
    };
    let (backlog, mut live) = {
        let store = lock(&shared.store);
        let live = shared.events.subscribe();
        let backlog: Vec<(&'static str, Value)> = match since {
            Some(rv) => store
                .history
                .iter()
                .filter(|r| r.rv > rv && matches(&r.key, &r.ns, &r.object))
                .map(|r| (r.type_, r.object.clone()))
                .collect(),
            None => store
                .objects
                .get(&t.key)
                .into_iter()
                .flat_map(|c| c.iter())
                .filter(|((ns, _), v)| matches(&t.key, ns, v))
                .map(|(_, v)| ("ADDED", v.clone()))
                .collect(),
        };
        (backlog, live)
    };
    let line = |type_: &str, obj: &Value| {
        let mut s = json!({"type": type_, "object": obj}).to_string();
        s.push('\n');
        Bytes::from(s)
    };
    tokio::spawn(async move {
        let run = async {
            for (type_, obj) in backlog {
                if tx.send(line(type_, &obj)).await.is_err() {
                    return;
                }
            }
            loop {
                match live.recv().await {
                    Ok(r) if matches(&r.key, &r.ns, &r.object) => {
                        if tx.send(line(r.type_, &r.object)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(timeout), run).await;
    });
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx)) });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn target_of<K: Resource<DynamicType = ()>>(ns: Option<&str>, name: Option<&str>) -> Target {
    let api_version = K::api_version(&()).to_string();
    let plural = K::plural(&()).to_string();
    Target {
        key: format!("{api_version}/{plural}"),
        api_version,
        plural,
        ns: ns.map(str::to_string),
        name: name.map(str::to_string),
        status: false,
    }
}

impl FakeApiServer {
    /// Starts the server on `127.0.0.1:0` and writes a kubeconfig pointing at it.
    pub async fn start() -> std::io::Result<Self> {
        let (events, _) = broadcast::channel(1 << 16);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            events,
            log: Mutex::new(Vec::new()),
            faults: Mutex::new(Vec::new()),
            behaviour: Mutex::new(Behaviour {
                pod_phase_on_create: None,
                simulate_rollouts: true,
                failing_images: Vec::new(),
            }),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let mut kubeconfig = tempfile::Builder::new().prefix("otafleet-fake-kubeconfig").suffix(".yaml").tempfile()?;
        use std::io::Write;
        write!(
            kubeconfig,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\n"
        )?;
        kubeconfig.flush()?;
        Ok(Self { addr, shared, kubeconfig, task })
    }

    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Path of the generated kubeconfig file.
    pub fn kubeconfig_path(&self) -> &Path {
        self.kubeconfig.path()
    }

    /// A client built from the generated kubeconfig, as the CLI would build one.
    pub async fn client(&self) -> Result<kube::Client, crate::Error> {
        crate::client_from_kubeconfig(Some(self.kubeconfig_path())).await
    }

    /// New pods move to `phase` right after creation (a stand-in kubelet); `None` leaves them Pending.
    pub fn set_pod_phase_on_create(&self, phase: Option<&str>) {
        lock(&self.shared.behaviour).pod_phase_on_create = phase.map(str::to_string);
    }

    /// Whether workload spec changes complete their rollout at once (default on).
    pub fn set_simulate_rollouts(&self, on: bool) {
        lock(&self.shared.behaviour).simulate_rollouts = on;
    }

    /// Workloads and pods set to an image containing `image` never become
    /// ready: their containers wait with `reason` (`ImagePullBackOff`,
    /// `CrashLoopBackOff`), a Deployment reports `ProgressDeadlineExceeded`.
    pub fn set_failing_image(&self, image: &str, reason: &str) {
        lock(&self.shared.behaviour).failing_images.push((image.to_string(), reason.to_string()));
    }

    /// The next `times` non-watch requests whose path contains `path_contains` (and
    /// whose method is `method`, if given) fail with `status` and a `Status` body.
    pub fn fail_next(&self, method: Option<&str>, path_contains: &str, status: u16, times: usize) {
        if times == 0 {
            return;
        }
        lock(&self.shared.faults).push(Fault {
            method: method.map(str::to_string),
            path_contains: path_contains.to_string(),
            status,
            remaining: times,
        });
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.log).clone()
    }

    /// Forgets the request log.
    pub fn clear_requests(&self) {
        lock(&self.shared.log).clear();
    }

    /// Number of non-watch requests with `method` whose path contains `path_contains`.
    pub fn count_requests(&self, method: &str, path_contains: &str) -> usize {
        lock(&self.shared.log)
            .iter()
            .filter(|r| !r.watch && r.method == method && r.path.contains(path_contains))
            .count()
    }

    /// Creates an object directly (no request logged), as `kubectl apply` would.
    pub fn insert<K>(&self, obj: &K) -> Result<K, crate::Error>
    where
        K: Resource<DynamicType = ()> + Serialize + DeserializeOwned,
    {
        let t = target_of::<K>(obj.meta().namespace.as_deref(), None);
        let behaviour = lock(&self.shared.behaviour).clone();
        let value = serde_json::to_value(obj)?;
        let created = lock(&self.shared.store)
            .create(&self.shared.events, &behaviour, &t, value)
            .map_err(|e| crate::Error::Invalid(e.message))?;
        Ok(serde_json::from_value(created)?)
    }

    /// Reads an object directly.
    pub fn get<K>(&self, ns: Option<&str>, name: &str) -> Option<K>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        let t = target_of::<K>(ns, Some(name));
        let v = lock(&self.shared.store).get(&t, name).cloned()?;
        serde_json::from_value(v).ok()
    }

    /// Lists objects directly (all namespaces when `ns` is `None`).
    pub fn list<K>(&self, ns: Option<&str>) -> Vec<K>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        let t = target_of::<K>(ns, None);
        lock(&self.shared.store)
            .list(&t, &Selector::everything(), "")
            .into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect()
    }

    /// Edits an object in place (spec and status alike) and emits a MODIFIED event.
    /// Returns false if it does not exist.
    pub fn modify<K>(&self, ns: Option<&str>, name: &str, f: impl FnOnce(&mut Value)) -> bool
    where
        K: Resource<DynamicType = ()>,
    {
        let t = target_of::<K>(ns, Some(name));
        let behaviour = lock(&self.shared.behaviour).clone();
        let mut store = lock(&self.shared.store);
        let Some(old) = store.get(&t, name).cloned() else {
            return false;
        };
        let mut next = old.clone();
        f(&mut next);
        let status_changed = next.get("status") != old.get("status");
        let mut res = store.commit(&self.shared.events, &behaviour, &t, name, &old, next.clone(), false);
        if status_changed {
            if let Ok(current) = &res {
                let current = current.clone();
                res = store.commit(&self.shared.events, &behaviour, &t, name, &current, next, true);
            }
        }
        res.is_ok()
    }

    /// Sets a pod's `status.phase` (the test plays the kubelet).
    pub fn set_pod_phase(&self, ns: &str, name: &str, phase: &str) -> bool {
        self.modify::<k8s_openapi::api::core::v1::Pod>(Some(ns), name, |p| {
            p["status"]["phase"] = json!(phase);
        })
    }

    /// Deletes an object directly, honouring finalizers.
    pub fn delete<K>(&self, ns: Option<&str>, name: &str) -> bool
    where
        K: Resource<DynamicType = ()>,
    {
        let t = target_of::<K>(ns, Some(name));
        lock(&self.shared.store).delete(&self.shared.events, &t, name).is_ok()
    }
}

/// Ready-made objects and helpers for scenarios against the fake server.
pub mod fixtures {
    use std::collections::BTreeMap;
    use std::future::Future;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use kube::api::ObjectMeta;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    use crate::akri::{self, Instance, InstanceSpec};
    use crate::controller::{run_controller, Context, Settings};
    use crate::crd::{FlashJob, FlashJobSpec};
    use crate::metrics::Metrics;

    /// An Akri `Instance` with the given uid and broker properties.
    pub fn akri_instance(ns: &str, name: &str, uid: &str, device: &str, application_type: &str) -> Instance {
        let mut i = Instance::new(
            name,
            InstanceSpec {
                configuration_name: format!("akri-{device}"),
                broker_properties: BTreeMap::from([
                    (akri::HOST_ENDPOINT.to_string(), format!("{name}.local:8266")),
                    (akri::DEVICE.to_string(), device.to_string()),
                    (akri::APPLICATION_TYPE.to_string(), application_type.to_string()),
                ]),
                shared: false,
                nodes: vec!["node-a".into()],
            },
        );
        i.metadata.namespace = Some(ns.into());
        i.metadata.uid = Some(uid.into());
        i
    }

    /// A pod of one container `robot` running `image`, Ready, with `labels`.
    pub fn running_pod(ns: &str, name: &str, labels: &[(&str, &str)], image: &str) -> k8s_openapi::api::core::v1::Pod {
        let value = serde_json::json!({
            "metadata": {"name": name, "namespace": ns,
                "labels": labels.iter().map(|(k, v)| (k.to_string(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>()},
            "spec": {"containers": [{"name": "robot", "image": image}], "nodeName": format!("node-{name}")},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "robot", "image": image, "imageID": "", "ready": true,
                    "restartCount": 0, "state": {"running": {}}}]},
        });
        serde_json::from_value(value).expect("a valid pod")
    }

    /// A deterministic UUID for device number `n`.
    pub fn device_uuid(n: usize) -> String {
        format!("7d7ae2b1-0000-4000-8000-{n:012}")
    }

    /// A FlashJob flashing `uuids` with a test firmware.
    pub fn flash_job(ns: &str, name: &str, uuids: &[String]) -> FlashJob {
        FlashJob {
            metadata: ObjectMeta { name: Some(name.into()), namespace: Some(ns.into()), ..Default::default() },
            spec: FlashJobSpec {
                uuid: uuids.to_vec(),
                firmware: "registry.example/esp32-thermo:1.2.0".into(),
                version: "1.2.0".into(),
                host_endpoint: None,
                device: None,
                application_type: None,
                external_ip: None,
                flashjob_pod_image: Some("registry.example/flasher:latest".into()),
            },
            status: None,
        }
    }

    /// Settings with short timers, for tests.
    pub fn fast_settings() -> Settings {
        Settings { requeue: Duration::from_secs(2), error_backoff: Duration::from_millis(100), ..Settings::default() }
    }

    /// A controller running in the background; stops (gracefully) when [`RunningOperator::stop`] is awaited.
    pub struct RunningOperator {
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<()>,
        /// The metrics the controller records into.
        pub metrics: Arc<Metrics>,
    }

    impl RunningOperator {
        /// Starts a controller with `settings` against `client`.
        pub fn start(client: kube::Client, settings: Settings) -> Self {
            let metrics = Arc::new(Metrics::new());
            let ctx = Arc::new(Context::new(client, metrics.clone(), settings, Some("test".into())));
            let (tx, rx) = oneshot::channel::<()>();
            let task = tokio::spawn(run_controller(ctx, async move {
                let _ = rx.await;
            }));
            Self { stop: Some(tx), task, metrics }
        }

        /// Stops the controller and waits for in-flight reconciles.
        pub async fn stop(mut self) {
            if let Some(tx) = self.stop.take() {
                let _ = tx.send(());
            }
            let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
            self.task.abort();
        }
    }

    /// Polls `check` every 20 ms until it returns `Some`, or panics after `timeout`.
    pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check().await {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_are_the_cores() {
        let obj = json!({"metadata": {"name": "p", "labels": {"status": "idle", "app": "x", "n": 1}}});
        let sel = |s: &str| parse_selector(s).expect("parses");
        assert!(labels_match(&obj, &sel("status=idle")));
        assert!(labels_match(&obj, &sel("status==idle,app")));
        assert!(!labels_match(&obj, &sel("status!=idle")));
        assert!(labels_match(&obj, &sel("app in (x,y),!gone")));
        assert!(!labels_match(&obj, &sel("app notin (x)")));
        assert!(labels_match(&obj, &sel("")));
        assert!(labels_match(&json!({"metadata": {"name": "bare"}}), &sel("!status")));
        assert!(!labels_match(&obj, &sel("n")), "a non-string label value is no label");
        assert_eq!(sel("app in (x,y)"), Selector::parse("app in (x,y)").expect("core parses"));
        let bad = parse_selector("app in (x").expect_err("unbalanced");
        assert_eq!(bad.code, 400);
        assert!(fields_match(&obj, "metadata.name=p"));
        assert!(!fields_match(&obj, "metadata.name!=p"));
    }

    #[test]
    fn paths() {
        let t = parse_target("/apis/application.flashjob.nbfc.io/v1alpha1/namespaces/default/flashjobs/j/status")
            .expect("parses");
        assert_eq!(t.key, "application.flashjob.nbfc.io/v1alpha1/flashjobs");
        assert_eq!(t.ns.as_deref(), Some("default"));
        assert_eq!(t.name.as_deref(), Some("j"));
        assert!(t.status);
        let t = parse_target("/api/v1/pods").expect("parses");
        assert_eq!((t.key.as_str(), t.ns, t.name), ("v1/pods", None, None));
        assert_eq!(percent_decode("a%3Db%2Cc"), "a=b,c");
    }

    #[test]
    fn merge_patch() {
        let mut doc = json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge(&mut doc, &json!({"a": null, "b": {"c": 5}}));
        assert_eq!(doc, json!({"b": {"c": 5, "d": 3}}));
    }
}
