//! Server-side apply and `metadata.managedFields`: every write records which *manager*
//! (`kubectl`, `kubectl-client-side-apply`, `kube-controller-manager`, ...) set which
//! fields, so that an apply (`kubectl apply --server-side`) can
//!
//! - **merge** its configuration into the live object (lists by their keys),
//! - **own** the fields it sets (two appliers setting the same value share them),
//! - **prune** fields it set last time and no longer sets, if nobody else owns them,
//! - and **refuse** (409 Conflict) to change a field another manager set, unless forced.
//!
//! Ordinary writes (create, update, patch) are `Update` operations: their manager takes
//! the fields it changed from everyone else, with no conflict. That is why `kubectl
//! scale` followed by `kubectl apply --server-side` of the old replica count conflicts.
//!
//! - [`fieldpath`]: paths and sets of paths, and their `fieldsV1` form;
//! - [`schema`]: which lists are keyed (and by what) and which objects are atomic;
//! - [`typed`]: field sets, comparison, merge and removal over JSON objects.
//!
//! Upstream: k8s.io/apimachinery/pkg/util/managedfields/internal (structuredmerge.go,
//! managedfieldsupdater.go, skipnonapplied.go, stripmeta.go, conflict.go), sigs.k8s.io/structured-merge-diff/v4/merge/update.go

pub mod fieldpath;
pub mod schema;
pub mod typed;

use fieldpath::{render, Element, Set};
use serde_json::{json, Value};

/// `Apply` (server-side apply) or `Update` (every other write).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    Apply,
    Update,
}

/// Who wrote: a manager name, the operation, the API version it wrote in, and the
/// subresource (`status`, `scale`) if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manager {
    pub name: String,
    pub operation: Operation,
    pub api_version: String,
    pub subresource: Option<String>,
}

impl Manager {
    pub fn new(name: &str, operation: Operation, api_version: &str, subresource: Option<&str>) -> Manager {
        let name = if name.is_empty() { "unknown" } else { name };
        Manager { name: name.into(), operation, api_version: api_version.into(), subresource: subresource.map(String::from) }
    }
    /// One entry per applier (whatever API version it applied in), one per updater and version.
    fn same(&self, o: &Manager) -> bool {
        self.name == o.name
            && self.operation == o.operation
            && self.subresource == o.subresource
            && (self.operation == Operation::Apply || self.api_version == o.api_version)
    }
    /// As conflicts name it: `"kubectl"`, `"kubectl" using apps/v1`,
    /// `"kubectl" with subresource "scale" using apps/v1`.
    pub fn display(&self) -> String {
        let mut s = format!("\"{}\"", self.name);
        if self.operation == Operation::Update {
            if let Some(sub) = &self.subresource {
                s.push_str(&format!(" with subresource \"{sub}\""));
            }
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }
}

/// The manager a request writes as: `?fieldManager=`, else the client's name from its
/// `User-Agent` (`kubectl/v1.33.2 (linux/amd64) ...` is `kubectl`), as kube-apiserver does.
pub fn manager_name(field_manager: Option<&str>, user_agent: Option<&str>) -> String {
    if let Some(m) = field_manager.filter(|m| !m.is_empty()) {
        return m.to_string();
    }
    let ua = user_agent.unwrap_or("");
    let prefix: String = ua.split('/').next().unwrap_or("").chars().filter(|c| !c.is_control()).take(128).collect();
    if prefix.is_empty() {
        "unknown".into()
    } else {
        prefix
    }
}

/// One `managedFields` entry.
#[derive(Clone, Debug)]
struct Entry {
    mgr: Manager,
    set: Set,
    time: Option<String>,
}

fn decode(mf: Option<&Value>) -> Vec<Entry> {
    let Some(Value::Array(list)) = mf else { return vec![] };
    list.iter()
        .filter_map(|e| {
            let operation = match e["operation"].as_str()? {
                "Apply" => Operation::Apply,
                "Update" => Operation::Update,
                _ => return None,
            };
            let mgr = Manager::new(e["manager"].as_str().unwrap_or(""), operation, e["apiVersion"].as_str()?, e["subresource"].as_str());
            Some(Entry { mgr, set: Set::from_fields_v1(&e["fieldsV1"]), time: e["time"].as_str().map(String::from) })
        })
        .collect()
}

fn encode(mut entries: Vec<Entry>) -> Value {
    entries.retain(|e| !e.set.is_empty());
    entries.sort_by(|a, b| {
        (a.mgr.operation, &a.time, &a.mgr.name, &a.mgr.api_version, &a.mgr.subresource).cmp(&(
            b.mgr.operation,
            &b.time,
            &b.mgr.name,
            &b.mgr.api_version,
            &b.mgr.subresource,
        ))
    });
    let list: Vec<Value> = entries
        .into_iter()
        .map(|e| {
            let op = if e.mgr.operation == Operation::Apply { "Apply" } else { "Update" };
            let mut v = json!({"manager": e.mgr.name, "operation": op, "apiVersion": e.mgr.api_version,
                               "fieldsType": "FieldsV1", "fieldsV1": e.set.to_fields_v1()});
            if let Some(t) = e.time {
                v["time"] = json!(t);
            }
            if let Some(s) = e.mgr.subresource {
                v["subresource"] = json!(s);
            }
            v
        })
        .collect();
    Value::Array(list)
}

/// Fields nobody owns: the type, the server's metadata, and what the subresource written
/// to does not cover (`status` through the object, everything but `status` through `/status`).
fn tracked(s: &Set, subresource: Option<&str>) -> Set {
    let f = |p: &[&str]| p.iter().map(|x| Element::Field(x.to_string())).collect::<Vec<_>>();
    let mut out = s.without_prefix(&f(&["apiVersion"])).without_prefix(&f(&["kind"]));
    for m in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "generation",
        "managedFields",
        "selfLink",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        out = out.without_prefix(&f(&["metadata", m]));
    }
    out.0.remove(&f(&["metadata"]));
    match subresource {
        Some("status") => out.without_prefix(&f(&["spec"])),
        _ => out.without_prefix(&f(&["status"])),
    }
}

fn without_managed_fields(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    v
}

/// Another manager owns fields an apply would change: `(manager, path)` pairs.
#[derive(Debug, PartialEq, Eq)]
pub struct Conflicts(pub Vec<(String, String)>);

impl Conflicts {
    /// kube-apiserver's message: `Apply failed with 1 conflict: conflict with "kubectl" using apps/v1: .spec.replicas`.
    pub fn message(&self) -> String {
        match &self.0[..] {
            [(m, p)] => format!("Apply failed with 1 conflict: conflict with {m}: {p}"),
            all => {
                let mut by: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
                for (m, p) in all {
                    by.entry(m).or_default().push(p);
                }
                let blocks: Vec<String> = by
                    .iter()
                    .map(|(m, ps)| format!("conflicts with {m}:\n{}", ps.iter().map(|p| format!("- {p}")).collect::<Vec<_>>().join("\n")))
                    .collect();
                format!("Apply failed with {} conflicts: {}", all.len(), blocks.join("\n"))
            }
        }
    }
}

/// Server-side apply of `cfg` (the whole configuration the manager wants) onto `live`
/// (`None`: the object does not exist yet). Returns the object to store, with its
/// `managedFields`, or the conflicts when `force` is false.
pub fn apply(kind: &str, live: Option<&Value>, cfg: &Value, mgr: &Manager, force: bool, now: &str) -> Result<Value, Conflicts> {
    let live_v = live.cloned().unwrap_or_else(|| json!({}));
    let mut entries = decode(live_v.pointer("/metadata/managedFields"));
    if entries.is_empty() && live.is_some() {
        // An object nobody tracked yet: what is there belongs to "before-first-apply".
        let everything = tracked(&typed::compare(kind, &json!({}), &without_managed_fields(&live_v)).changed(), None);
        entries.push(Entry {
            mgr: Manager::new("before-first-apply", Operation::Update, &mgr.api_version, None),
            set: everything,
            time: None,
        });
    }
    let new_set = tracked(&typed::fieldset(kind, cfg), mgr.subresource.as_deref());
    let me = match entries.iter().position(|e| e.mgr.same(mgr)) {
        Some(i) => i,
        None => {
            entries.push(Entry { mgr: mgr.clone(), set: Set::default(), time: None });
            entries.len() - 1
        }
    };
    let last = std::mem::replace(&mut entries[me].set, new_set.clone());
    entries[me].mgr.api_version = mgr.api_version.clone();
    let mut merged = typed::merge(kind, &without_managed_fields(&live_v), cfg);
    // What only the status subresource writes stays as it is.
    match live_v.get("status") {
        Some(s) => merged["status"] = s.clone(),
        None => drop(merged.as_object_mut().map(|m| m.remove("status"))),
    }
    // Prune what this manager set last time, no longer sets, and nobody else owns.
    let owned = entries.iter().fold(Set::default(), |acc, e| acc.union(&e.set));
    // Parents before children: a list item goes whole, before its key fields could change it.
    for p in last.minus(&new_set).0.iter() {
        if !owned.contains(p) && !owned.has_descendant(p) {
            typed::remove(kind, &mut merged, p, &owned);
        }
    }
    let cmp = typed::compare(kind, &without_managed_fields(&live_v), &merged);
    let (changed, removed) = (tracked(&cmp.changed(), None), tracked(&cmp.removed, None));
    let mut conflicts = vec![];
    for (i, e) in entries.iter().enumerate().filter(|(i, _)| *i != me) {
        conflicts.extend(e.set.intersect(&changed).0.iter().map(|p| (e.mgr.display(), render(p))));
        let _ = i;
    }
    if !conflicts.is_empty() && !force {
        return Err(Conflicts(conflicts));
    }
    for (i, e) in entries.iter_mut().enumerate() {
        if i != me {
            e.set = e.set.minus(&changed).minus(&removed);
        }
    }
    if live.is_none() || without_managed_fields(&live_v) != merged {
        entries[me].time = Some(now.to_string());
    }
    merged["metadata"]["managedFields"] = encode(entries);
    Ok(merged)
}

/// Record an ordinary write (create, update, patch) of `new` over `old` by `mgr`: the
/// manager takes every field it changed from the others. A client that sends
/// `managedFields` replaces them (`[]` clears them all); one that sends none keeps the
/// stored ones. An object written while untracked stays untracked.
pub fn update(kind: &str, old: Option<&Value>, new: &mut Value, mgr: &Manager, now: &str) {
    let sent = new.pointer("/metadata/managedFields").cloned();
    let reset = matches!(&sent, Some(Value::Array(a)) if a.is_empty() || a.iter().all(|e| e.as_object().is_some_and(|m| m.is_empty())));
    let mut entries = match (&sent, mgr.subresource.is_some()) {
        _ if reset => vec![],
        (Some(v @ Value::Array(_)), false) if !decode(Some(v)).is_empty() => decode(Some(v)),
        _ => decode(old.and_then(|o| o.pointer("/metadata/managedFields"))),
    };
    let untracked = (entries.is_empty() && old.is_some()) || reset;
    let old_v = old.map(without_managed_fields).unwrap_or_else(|| json!({}));
    let cmp = typed::compare(kind, &old_v, &without_managed_fields(new));
    let sub = mgr.subresource.as_deref();
    let (changed, removed) = (tracked(&cmp.changed(), sub), tracked(&cmp.removed, sub));
    if untracked {
        if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("managedFields");
        }
        return;
    }
    let mut mine = false;
    for e in entries.iter_mut() {
        if e.mgr.same(mgr) {
            mine = true;
            e.set = e.set.minus(&removed);
            if !changed.is_empty() {
                e.set = e.set.union(&changed);
                e.time = Some(now.to_string());
            }
        } else {
            e.set = e.set.minus(&changed).minus(&removed);
        }
    }
    if !mine && !changed.is_empty() {
        entries.push(Entry { mgr: mgr.clone(), set: changed, time: Some(now.to_string()) });
    }
    new["metadata"]["managedFields"] = encode(entries);
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-12-01T10:00:00Z";

    fn deploy(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"app": "web"}},
               "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": image}]}}}})
    }
    fn kubectl(op: Operation, sub: Option<&str>) -> Manager {
        Manager::new("kubectl", op, "apps/v1", sub)
    }

    #[test]
    fn apply_creates_and_owns_what_it_sent() {
        let obj = apply("Deployment", None, &deploy(3, "v1"), &kubectl(Operation::Apply, None), false, NOW).unwrap();
        let mf = &obj["metadata"]["managedFields"];
        assert_eq!(mf.as_array().unwrap().len(), 1);
        assert_eq!(
            (mf[0]["manager"].as_str(), mf[0]["operation"].as_str(), mf[0]["time"].as_str()),
            (Some("kubectl"), Some("Apply"), Some(NOW))
        );
        let f = &mf[0]["fieldsV1"];
        assert_eq!(f["f:spec"]["f:replicas"], json!({}));
        assert_eq!(f["f:spec"]["f:selector"], json!({}), "a label selector is atomic");
        assert!(f["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"]["f:image"].is_object());
        assert!(f["f:metadata"].get("f:name").is_none(), "the name is nobody's");
    }

    #[test]
    fn scale_then_apply_conflicts_unless_forced() {
        let mut obj = apply("Deployment", None, &deploy(3, "v1"), &kubectl(Operation::Apply, None), false, NOW).unwrap();
        // `kubectl scale --replicas=5`: an Update through /scale by "kubectl".
        let old = obj.clone();
        obj["spec"]["replicas"] = json!(5);
        update("Deployment", Some(&old), &mut obj, &kubectl(Operation::Update, Some("scale")), NOW);
        let err = apply("Deployment", Some(&obj), &deploy(3, "v1"), &kubectl(Operation::Apply, None), false, NOW).unwrap_err();
        assert_eq!(
            err.message(),
            "Apply failed with 1 conflict: conflict with \"kubectl\" with subresource \"scale\" using apps/v1: .spec.replicas"
        );
        // The same value is shared ownership, no conflict; forcing takes the field back.
        assert!(apply("Deployment", Some(&obj), &deploy(5, "v1"), &kubectl(Operation::Apply, None), false, NOW).is_ok());
        let forced = apply("Deployment", Some(&obj), &deploy(3, "v1"), &kubectl(Operation::Apply, None), true, NOW).unwrap();
        assert_eq!(forced["spec"]["replicas"], 3);
        let mf = forced["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(mf.len(), 1, "the scale entry lost its only field: {mf:?}");
    }

    #[test]
    fn apply_prunes_what_it_no_longer_sets() {
        let two = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
            "spec": {"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 443}], "selector": {"app": "s"}}});
        let mgr = Manager::new("kubectl", Operation::Apply, "v1", None);
        let mut live = apply("Service", None, &two, &mgr, false, NOW).unwrap();
        live["spec"]["clusterIP"] = json!("10.96.0.5"); // set by the server, owned by nobody
        let mut one = two.clone();
        one["spec"]["ports"] = json!([{"name": "a", "port": 80}]);
        let after = apply("Service", Some(&live), &one, &mgr, false, NOW).unwrap();
        assert_eq!(after["spec"]["ports"], json!([{"name": "a", "port": 80}]));
        assert_eq!(after["spec"]["clusterIP"], "10.96.0.5");
    }

    #[test]
    fn updates_take_fields_and_honour_reset() {
        let mut obj = apply("Deployment", None, &deploy(3, "v1"), &kubectl(Operation::Apply, None), false, NOW).unwrap();
        let old = obj.clone();
        obj["spec"]["template"]["spec"]["containers"][0]["image"] = json!("v2");
        update("Deployment", Some(&old), &mut obj, &Manager::new("kubectl-set", Operation::Update, "apps/v1", None), NOW);
        let mf = obj["metadata"]["managedFields"].as_array().unwrap().clone();
        assert_eq!(mf.len(), 2);
        assert_eq!(mf[1]["manager"], "kubectl-set");
        assert!(mf[0]["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"].get("f:image").is_none());
        let mut reset = obj.clone();
        reset["metadata"]["managedFields"] = json!([]);
        update("Deployment", Some(&obj), &mut reset, &kubectl(Operation::Update, None), NOW);
        assert!(reset["metadata"].get("managedFields").is_none());
        assert_eq!(manager_name(None, Some("kubectl/v1.33.2 (linux/amd64) kubernetes/a57b6f7")), "kubectl");
        assert_eq!(manager_name(Some("helm"), Some("x")), "helm");
    }
}
