//! The deep merge of `additional_k8s_params` into generated objects, with
//! Kubernetes strategic-merge semantics for the lists people overlay:
//!
//! * objects merge key by key, recursively;
//! * a list whose entries all carry a `name` (containers, initContainers,
//!   env, volumes, volumeMounts, ports, imagePullSecrets) merges entry by
//!   entry on `name`: an entry of the overlay with a known name merges into
//!   it, a new name is appended (in the overlay's order);
//! * any other list, and every scalar, is replaced by the overlay's;
//! * `null` in the overlay deletes the key (as a JSON merge patch does).

use serde_json::{Map, Value};

/// Merges `overlay` into `base`.
pub fn merge(base: &mut Value, overlay: &Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => merge_objects(b, o),
        (Value::Array(b), Value::Array(o)) if by_name(b) && by_name(o) => merge_named(b, o),
        (b, o) => *b = o.clone(),
    }
}

fn merge_objects(base: &mut Map<String, Value>, overlay: &Map<String, Value>) {
    for (k, v) in overlay {
        if v.is_null() {
            base.remove(k);
            continue;
        }
        match base.get_mut(k) {
            Some(existing) => merge(existing, v),
            None => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Whether every entry of a (non-empty) list is an object with a string `name`.
fn by_name(list: &[Value]) -> bool {
    !list.is_empty() && list.iter().all(|e| e.get("name").is_some_and(Value::is_string))
}

fn merge_named(base: &mut Vec<Value>, overlay: &[Value]) {
    for o in overlay {
        let name = o.get("name");
        match base.iter_mut().find(|b| b.get("name") == name) {
            Some(b) => merge(b, o),
            None => base.push(o.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::merge;
    use serde_json::json;

    fn pod_spec() -> serde_json::Value {
        json!({"containers": [{"name": "ros-app", "image": "a:1", "env": [{"name": "A", "value": "1"}]}],
               "volumes": [{"name": "logs", "emptyDir": {}}], "nodeSelector": {"zone": "x"}})
    }

    #[test]
    fn env_is_added_to_the_named_container() {
        let mut s = pod_spec();
        merge(&mut s, &json!({"containers": [{"name": "ros-app", "env": [{"name": "B", "value": "2"}]}]}));
        assert_eq!(s["containers"][0]["env"], json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]));
        assert_eq!(s["containers"][0]["image"], "a:1", "the rest of the container stays");
        merge(&mut s, &json!({"containers": [{"name": "ros-app", "env": [{"name": "A", "value": "9"}]}]}));
        assert_eq!(s["containers"][0]["env"][0], json!({"name": "A", "value": "9"}), "same name: merged");
    }

    #[test]
    fn a_container_is_added_and_volumes_merge_by_name() {
        let mut s = pod_spec();
        merge(
            &mut s,
            &json!({"containers": [{"name": "sidecar", "image": "s:1"}],
                "volumes": [{"name": "logs", "emptyDir": {"medium": "Memory"}}, {"name": "maps", "hostPath": {"path": "/maps"}}]}),
        );
        let names: Vec<_> = s["containers"].as_array().unwrap().iter().map(|c| c["name"].clone()).collect();
        assert_eq!(names, vec![json!("ros-app"), json!("sidecar")]);
        assert_eq!(s["volumes"][0], json!({"name": "logs", "emptyDir": {"medium": "Memory"}}));
        assert_eq!(s["volumes"][1]["name"], "maps");
    }

    #[test]
    fn scalars_and_unnamed_lists_are_replaced_and_null_deletes() {
        let mut s = json!({"replicas": 1, "args": ["a", "b"], "nodeSelector": {"zone": "x"}});
        merge(&mut s, &json!({"replicas": 3, "args": ["c"], "nodeSelector": null}));
        assert_eq!(s, json!({"replicas": 3, "args": ["c"]}));
    }
}
