//! Patches: the three ways a client changes part of an object without sending all of it.
//!
//! - **JSON merge patch** (RFC 7386, `application/merge-patch+json`): objects merge key by
//!   key, `null` deletes a key, anything else (lists included) replaces what was there.
//! - **Strategic merge patch** (`application/strategic-merge-patch+json`, what
//!   `kubectl apply` and `kubectl patch` send by default): like a merge patch, except that
//!   some lists are merged instead of replaced. A pod's `containers` are merged *by name*,
//!   so `{"spec":{"containers":[{"name":"app","image":"v2"}]}}` changes one container's
//!   image and leaves the others alone; a service's `ports` are merged by `port`. Which
//!   lists merge, and on which key, comes from the Go struct tags of k8s.io/api
//!   (`patchStrategy:"merge" patchMergeKey:"name"`): [`patch_meta`] has them.
//!   Directives — keys starting with `$` — say what a plain value cannot: `$patch:
//!   delete|replace`, `$retainKeys`, `$setElementOrder/<list>`,
//!   `$deleteFromPrimitiveList/<list>`. They steer the merge and are never stored.
//! - **JSON patch** (RFC 6902, a list of `add`/`remove`/`replace`/`test` operations): the
//!   apiserver uses the `json-patch` crate for it.
//!
//! Upstream: k8s.io/apimachinery/pkg/util/strategicpatch/patch.go, k8s.io/apimachinery/pkg/util/jsonmergepatch

use serde_json::{Map, Value};

/// RFC 7386: objects merge recursively, `null` deletes, anything else replaces.
pub fn merge_patch(doc: &mut Value, patch: &Value) {
    match (doc, patch) {
        (Value::Object(d), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    d.remove(k);
                } else {
                    merge_patch(d.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (d, p) => *d = strip_nulls(p),
    }
}

/// A merge patch's value put in place of nothing keeps no `null` members (RFC 7386).
fn strip_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), strip_nulls(v))).collect()),
        other => other.clone(),
    }
}

/// How a list field is patched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListStrategy {
    /// The patch's list replaces the old one (no `patchStrategy` tag).
    Replace,
    /// A list of objects merged element by element, matched on this key.
    MergeByKey(&'static str),
    /// A list of strings merged as a set (`metadata.finalizers`).
    MergePrimitives,
}

/// The list strategies of one kind, by dotted path without indices.
pub struct PatchMeta {
    pub lists: Vec<(String, ListStrategy)>,
}

impl PatchMeta {
    pub fn list_strategy(&self, path: &str) -> ListStrategy {
        self.lists.iter().find(|(p, _)| p == path).map_or(ListStrategy::Replace, |(_, s)| *s)
    }
}

/// Why a strategic merge patch could not be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatchError {
    #[error("a patch must be a JSON object")]
    NotAnObject,
    #[error("unknown $patch directive {0:?} at {1}")]
    UnknownDirective(String, String),
    #[error("{0} must be a list")]
    NotAList(String),
    #[error("an element of {0} lacks its merge key {1:?}")]
    MissingMergeKey(String, String),
    /// `$retainKeys` that is not a list, or that leaves out a key the patch itself sets
    /// (apimachinery's `ErrBadPatchFormatForRetainKeys`, worded as it is).
    #[error("invalid patch format of retainKeys")]
    BadRetainKeys,
}

use ListStrategy::{MergeByKey, MergePrimitives};

/// The merge keys of a pod spec's lists, relative to the spec.
fn pod_spec_lists(at: &str, out: &mut Vec<(String, ListStrategy)>) {
    let by = |k| MergeByKey(k);
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        out.push((format!("{at}.{list}"), by("name")));
        for (field, key) in [
            ("ports", "containerPort"),
            ("env", "name"),
            ("volumeMounts", "mountPath"),
            ("volumeDevices", "devicePath"),
            ("resizePolicy", "resourceName"),
        ] {
            out.push((format!("{at}.{list}.{field}"), by(key)));
        }
    }
    for (field, key) in [
        ("volumes", "name"),
        ("imagePullSecrets", "name"),
        ("hostAliases", "ip"),
        ("topologySpreadConstraints", "topologyKey"),
        ("resourceClaims", "name"),
        ("schedulingGates", "name"),
    ] {
        out.push((format!("{at}.{field}"), by(key)));
    }
}

/// Patch metadata for a kind, from k8s.io/api's `patchStrategy`/`patchMergeKey` tags.
pub fn patch_meta(kind: &str) -> PatchMeta {
    let mut lists = vec![("metadata.ownerReferences".to_string(), MergeByKey("uid")), ("metadata.finalizers".to_string(), MergePrimitives)];
    let pod_spec = match kind {
        "Pod" => Some("spec"),
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job" | "ReplicationController" => Some("spec.template.spec"),
        "CronJob" => Some("spec.jobTemplate.spec.template.spec"),
        _ => None,
    };
    if let Some(at) = pod_spec {
        pod_spec_lists(at, &mut lists);
    }
    let more: &[(&str, ListStrategy)] = match kind {
        "Pod" => &[("status.conditions", MergeByKey("type")), ("status.podIPs", MergeByKey("ip")), ("status.hostIPs", MergeByKey("ip"))],
        "Service" => &[("spec.ports", MergeByKey("port"))],
        "Node" => &[("status.conditions", MergeByKey("type")), ("status.addresses", MergeByKey("type"))],
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job" => &[("status.conditions", MergeByKey("type"))],
        "ServiceAccount" => &[("secrets", MergeByKey("name"))],
        "Namespace" => &[("status.conditions", MergeByKey("type"))],
        _ => &[],
    };
    lists.extend(more.iter().map(|(p, s)| (p.to_string(), *s)));
    PatchMeta { lists }
}

/// Apply a strategic merge patch to `original`; the result holds no `$` key.
pub fn strategic_merge(original: &Value, patch: &Value, meta: &PatchMeta) -> Result<Value, PatchError> {
    let Value::Object(p) = patch else { return Err(PatchError::NotAnObject) };
    let o = original.as_object().cloned().unwrap_or_default();
    Ok(merge_map(o, p, "", meta)?.map(Value::Object).unwrap_or(Value::Object(Map::new())))
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Merge patch map `p` into `o`. `None`: the map is deleted (`$patch: delete`).
fn merge_map(
    mut o: Map<String, Value>,
    p: &Map<String, Value>,
    path: &str,
    meta: &PatchMeta,
) -> Result<Option<Map<String, Value>>, PatchError> {
    match p.get("$patch").map(|v| v.as_str().unwrap_or("")) {
        None | Some("merge") => {}
        Some("delete") => return Ok(None),
        Some("replace") => return Ok(Some(without_directives(p))),
        Some(other) => return Err(PatchError::UnknownDirective(other.to_string(), path.to_string())),
    }
    retain_keys(&mut o, p)?;
    for (k, v) in p {
        if let Some(list) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let drop: Vec<&Value> = v.as_array().map(|a| a.iter().collect()).unwrap_or_default();
            if let Some(Value::Array(items)) = o.get_mut(list) {
                items.retain(|i| !drop.contains(&i));
            }
        } else if !k.starts_with('$') {
            merge_key(&mut o, k, v, &join(path, k), meta)?;
        }
    }
    for (k, order) in p.iter().filter_map(|(k, v)| Some((k.strip_prefix("$setElementOrder/")?, v))) {
        let strategy = meta.list_strategy(&join(path, k));
        if let Some(Value::Array(items)) = o.get_mut(k) {
            reorder(items, order.as_array().map(Vec::as_slice).unwrap_or_default(), strategy);
        }
    }
    Ok(Some(o))
}

/// `$retainKeys`: before the patch is merged, the original keeps only the keys listed,
/// and every key the patch sets (other than to null, or by a directive) must be listed.
fn retain_keys(o: &mut Map<String, Value>, p: &Map<String, Value>) -> Result<(), PatchError> {
    let Some(keep) = p.get("$retainKeys") else { return Ok(()) };
    let keep = keep.as_array().ok_or(PatchError::BadRetainKeys)?;
    let listed = |k: &str| keep.iter().any(|r| r.as_str() == Some(k));
    if p.iter().any(|(k, v)| !k.starts_with('$') && !v.is_null() && !listed(k)) {
        return Err(PatchError::BadRetainKeys);
    }
    o.retain(|k, _| listed(k));
    Ok(())
}

/// Merge one key of a patch map into the original map.
fn merge_key(o: &mut Map<String, Value>, k: &str, v: &Value, path: &str, meta: &PatchMeta) -> Result<(), PatchError> {
    match (o.remove(k), v) {
        (_, Value::Null) => {}
        (Some(Value::Object(old)), Value::Object(pm)) => {
            if let Some(m) = merge_map(old, pm, path, meta)? {
                o.insert(k.to_string(), Value::Object(m));
            }
        }
        (None, Value::Object(pm)) => {
            if let Some(m) = merge_map(Map::new(), pm, path, meta)? {
                o.insert(k.to_string(), Value::Object(m));
            }
        }
        (old, Value::Array(pl)) => {
            let old = match old {
                Some(Value::Array(a)) => a,
                _ => vec![],
            };
            o.insert(k.to_string(), Value::Array(merge_list(old, pl, path, meta)?));
        }
        (_, other) => drop(o.insert(k.to_string(), other.clone())),
    }
    Ok(())
}

/// Merge a patch list into the original list by the list's strategy.
fn merge_list(old: Vec<Value>, patch: &[Value], path: &str, meta: &PatchMeta) -> Result<Vec<Value>, PatchError> {
    let replace_all = patch.iter().any(|e| e.get("$patch").and_then(Value::as_str) == Some("replace"));
    let rest: Vec<&Value> = patch.iter().filter(|e| e.get("$patch").and_then(Value::as_str) != Some("replace")).collect();
    match meta.list_strategy(path) {
        _ if replace_all => Ok(rest.into_iter().map(without_directives_value).collect()),
        ListStrategy::Replace => Ok(patch.iter().map(without_directives_value).collect()),
        MergePrimitives => {
            let mut out = old;
            for v in patch {
                if !out.contains(v) {
                    out.push(v.clone());
                }
            }
            Ok(out)
        }
        MergeByKey(key) => merge_by_key(old, &rest, key, path, meta),
    }
}

fn merge_by_key(mut out: Vec<Value>, patch: &[&Value], key: &str, path: &str, meta: &PatchMeta) -> Result<Vec<Value>, PatchError> {
    for item in patch {
        let Value::Object(pm) = item else { return Err(PatchError::NotAList(path.to_string())) };
        let k = pm.get(key).ok_or_else(|| PatchError::MissingMergeKey(path.to_string(), key.to_string()))?;
        let at = out.iter().position(|e| e.get(key) == Some(k));
        let delete = pm.get("$patch").and_then(Value::as_str) == Some("delete");
        match (at, delete) {
            (Some(i), true) => drop(out.remove(i)),
            (None, true) => {}
            (Some(i), false) => {
                let old = out[i].as_object().cloned().unwrap_or_default();
                match merge_map(old, pm, path, meta)? {
                    Some(m) => out[i] = Value::Object(m),
                    None => drop(out.remove(i)),
                }
            }
            (None, false) => {
                if let Some(m) = merge_map(Map::new(), pm, path, meta)? {
                    out.push(Value::Object(m));
                }
            }
        }
    }
    Ok(out)
}

/// `$setElementOrder`: items named in `order` come in that order; items the order does not
/// name (the server's own) keep their place after the item they followed.
fn reorder(items: &mut Vec<Value>, order: &[Value], strategy: ListStrategy) {
    let matches = |item: &Value, o: &Value| match strategy {
        MergeByKey(k) => item.get(k).is_some() && item.get(k) == o.get(k),
        _ => item == o,
    };
    let mut ordered: Vec<Value> = order.iter().filter_map(|o| items.iter().find(|i| matches(i, o)).cloned()).collect();
    for (i, item) in items.iter().enumerate() {
        if order.iter().any(|o| matches(item, o)) {
            continue;
        }
        // Put a server-only item right after the nearest earlier item that is ordered.
        let anchor = items[..i].iter().rev().find_map(|prev| ordered.iter().position(|x| x == prev));
        ordered.insert(anchor.map_or(0, |a| a + 1), item.clone());
    }
    *items = ordered;
}

fn without_directives(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter().filter(|(k, _)| !k.starts_with('$')).map(|(k, v)| (k.clone(), without_directives_value(v))).collect()
}

fn without_directives_value(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(without_directives(m)),
        Value::Array(a) => Value::Array(a.iter().map(without_directives_value).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(kind: &str, original: Value, patch: Value) -> Value {
        let out = strategic_merge(&original, &patch, &patch_meta(kind)).unwrap();
        assert!(!out.to_string().contains("\"$"), "a directive survived: {out}");
        out
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge_patch(&mut doc, &json!({"a": "z", "c": {"f": null}, "l": [3], "n": {"x": null, "y": 1}}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}, "l": [3], "n": {"y": 1}}));
        let mut doc = json!({"a": 1});
        merge_patch(&mut doc, &json!(["whole"]));
        assert_eq!(doc, json!(["whole"]));
    }

    #[test]
    fn kubectl_apply_changing_one_of_two_service_ports() {
        let svc =
            json!({"spec": {"ports": [{"name": "a", "port": 80, "targetPort": 8080}, {"name": "b", "port": 443, "targetPort": 8443}]}});
        let patch = json!({"spec": {"$setElementOrder/ports": [{"port": 80}, {"port": 8443}],
            "ports": [{"port": 8443, "name": "b", "targetPort": 8443}, {"$patch": "delete", "port": 443}]}});
        let out = smp("Service", svc, patch);
        assert_eq!(
            out["spec"]["ports"],
            json!([{"name": "a", "port": 80, "targetPort": 8080}, {"name": "b", "port": 8443, "targetPort": 8443}])
        );
    }

    #[test]
    fn containers_merge_by_name_and_env_by_name() {
        let pod = json!({"spec": {"containers": [{"name": "app", "image": "v1", "env": [{"name": "A", "value": "1"}]}, {"name": "side", "image": "s"}]}});
        let out = smp("Pod", pod, json!({"spec": {"containers": [{"name": "app", "env": [{"name": "B", "value": "2"}]}]}}));
        assert_eq!(out["spec"]["containers"][0]["env"], json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]));
        assert_eq!(out["spec"]["containers"][0]["image"], "v1");
        assert_eq!(out["spec"]["containers"][1]["name"], "side");
        // A Deployment's pod template merges the same way.
        let d = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "1"}]}}}});
        let out = smp("Deployment", d, json!({"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "2"}]}}}}));
        assert_eq!(out["spec"]["template"]["spec"]["containers"], json!([{"name": "a", "image": "1"}, {"name": "b", "image": "2"}]));
    }

    #[test]
    fn patch_directives_replace_and_delete() {
        let o = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"containers": [{"name": "x"}, {"name": "y"}]}});
        let out = smp("Pod", o.clone(), json!({"metadata": {"labels": {"$patch": "replace", "c": "3"}}}));
        assert_eq!(out["metadata"]["labels"], json!({"c": "3"}));
        let out = smp("Pod", o.clone(), json!({"metadata": {"labels": {"$patch": "delete"}}}));
        assert!(out["metadata"].get("labels").is_none());
        let out = smp("Pod", o, json!({"spec": {"containers": [{"$patch": "replace"}, {"name": "z"}]}}));
        assert_eq!(out["spec"]["containers"], json!([{"name": "z"}]));
    }

    #[test]
    fn retain_keys_finalizers_and_nulls() {
        let o = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}, "metadata": {"finalizers": ["a", "b"], "labels": {"x": "1"}}});
        let out = smp("Deployment", o.clone(), json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}));
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        let out = smp("Deployment", o.clone(), json!({"metadata": {"finalizers": ["c", "a"]}}));
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b", "c"]));
        let out = smp("Deployment", o.clone(), json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}));
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
        let out = smp("Deployment", o, json!({"metadata": {"labels": {"x": null}}}));
        assert_eq!(out["metadata"]["labels"], json!({}));
    }

    #[test]
    fn retain_keys_must_be_a_list_naming_what_the_patch_sets() {
        let m = patch_meta("Pod");
        let o = json!({"metadata": {"name": "p", "labels": {"a": "1"}, "annotations": {"b": "2"}}});
        let bad = |patch: Value| strategic_merge(&o, &patch, &m);
        assert_eq!(bad(json!({"metadata": {"$retainKeys": ["name"], "labels": {"n": "1"}}})), Err(PatchError::BadRetainKeys));
        assert_eq!(bad(json!({"metadata": {"$retainKeys": "notalist"}})), Err(PatchError::BadRetainKeys));
        // Listed keys are kept and merged; a key set to null or by a directive need not be listed.
        let out =
            smp("Pod", o.clone(), json!({"metadata": {"$retainKeys": ["name", "labels"], "labels": {"n": "1"}, "annotations": null}}));
        assert_eq!(out["metadata"], json!({"name": "p", "labels": {"a": "1", "n": "1"}}));
    }

    #[test]
    fn set_element_order_keeps_server_only_items_in_place() {
        let o = json!({"spec": {"containers": [{"name": "a"}, {"name": "injected"}, {"name": "b"}]}});
        let out = smp("Pod", o, json!({"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}]}}));
        let names: Vec<&str> = out["spec"]["containers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["b", "a", "injected"]);
    }

    #[test]
    fn bad_patches_are_errors() {
        let m = patch_meta("Pod");
        assert_eq!(strategic_merge(&json!({}), &json!([1]), &m), Err(PatchError::NotAnObject));
        assert!(matches!(strategic_merge(&json!({}), &json!({"spec": {"$patch": "explode"}}), &m), Err(PatchError::UnknownDirective(..))));
        assert!(matches!(
            strategic_merge(&json!({"spec": {"containers": []}}), &json!({"spec": {"containers": [{"image": "x"}]}}), &m),
            Err(PatchError::MissingMergeKey(..))
        ));
    }
}
