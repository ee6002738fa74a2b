//! The three operations server-side apply needs on objects as JSON, each guided by the
//! kind's [`schema`](super::schema): the set of fields an object sets ([`fieldset`]), the
//! fields that differ between two versions ([`compare`]), and the merge of an applied
//! configuration into the live object ([`merge`]); plus removing fields ([`remove`]).
//!
//! Upstream: sigs.k8s.io/structured-merge-diff/v4/typed (tofieldset.go, compare.go, merge.go, remove.go)

use super::fieldpath::{Element, Path, Set};
use super::schema::{shape, Shape};
use serde_json::{Map, Value};

/// Where a walk is: the path so far, and the schema path (field names only) for lookups.
#[derive(Clone)]
struct At<'a> {
    kind: &'a str,
    path: Path,
    schema: String,
}

impl<'a> At<'a> {
    fn root(kind: &'a str) -> Self {
        At { kind, path: vec![], schema: String::new() }
    }
    fn field(&self, k: &str) -> Self {
        let mut path = self.path.clone();
        path.push(Element::Field(k.to_string()));
        let schema = if self.schema.is_empty() { k.to_string() } else { format!("{}.{k}", self.schema) };
        At { kind: self.kind, path, schema }
    }
    /// A list item: a new path element, the same schema path (items have no name).
    fn item(&self, e: Element) -> Self {
        let mut path = self.path.clone();
        path.push(e);
        At { kind: self.kind, path, schema: self.schema.clone() }
    }
    fn shape(&self) -> Shape {
        shape(self.kind, &self.schema)
    }
}

/// Owned as one value: scalars, nulls, empty objects and lists, atomic nodes, and lists
/// the schema does not key.
fn is_leaf(v: &Value, s: Shape) -> bool {
    match v {
        Value::Object(m) => m.is_empty() || s == Shape::Atomic,
        Value::Array(a) => a.is_empty() || !matches!(s, Shape::Keyed(_) | Shape::Set),
        _ => true,
    }
}

/// The path element of a list item: its key fields, or its value for a set.
fn element_of(item: &Value, s: Shape, index: usize) -> Element {
    match s {
        Shape::Keyed(keys) => {
            let mut kv: Vec<(String, String)> = keys
                .iter()
                .filter_map(|(k, default)| match item.get(*k) {
                    Some(v) if !v.is_null() => Some((k.to_string(), v.to_string())),
                    _ => default.map(|d| (k.to_string(), d.to_string())),
                })
                .collect();
            kv.sort();
            if kv.is_empty() {
                Element::Index(index)
            } else {
                Element::Key(kv)
            }
        }
        Shape::Set => Element::Value(item.to_string()),
        _ => Element::Index(index),
    }
}

fn items(a: &[Value], s: Shape) -> Vec<(Element, &Value)> {
    a.iter().enumerate().map(|(i, v)| (element_of(v, s, i), v)).collect()
}

/// Every field `v` sets: its leaves, and each item of its keyed and set lists.
pub fn fieldset(kind: &str, v: &Value) -> Set {
    let mut out = Set::default();
    if let Value::Object(m) = v {
        for (k, c) in m {
            set_of(c, &At::root(kind).field(k), &mut out);
        }
    }
    out
}

fn set_of(v: &Value, at: &At, out: &mut Set) {
    let s = at.shape();
    if is_leaf(v, s) {
        out.insert(at.path.clone());
        return;
    }
    match v {
        Value::Object(m) => m.iter().for_each(|(k, c)| set_of(c, &at.field(k), out)),
        Value::Array(a) => {
            for (e, item) in items(a, s) {
                let here = at.item(e);
                out.insert(here.path.clone());
                if let Value::Object(m) = item {
                    m.iter().for_each(|(k, c)| set_of(c, &here.field(k), out));
                }
            }
        }
        _ => {}
    }
}

/// What changed from `old` to `new`.
#[derive(Debug, Default)]
pub struct Comparison {
    pub added: Set,
    pub modified: Set,
    pub removed: Set,
}

impl Comparison {
    /// Added or modified: what a writer now sets.
    pub fn changed(&self) -> Set {
        self.added.union(&self.modified)
    }
}

/// The fields that were added, modified or removed between two versions of an object.
pub fn compare(kind: &str, old: &Value, new: &Value) -> Comparison {
    let mut c = Comparison::default();
    let empty = Map::new();
    let (o, n) = (old.as_object().unwrap_or(&empty), new.as_object().unwrap_or(&empty));
    let root = At::root(kind);
    for k in keys(o, n) {
        diff(o.get(k), n.get(k), &root.field(k), &mut c, true);
    }
    c
}

fn keys<'m>(a: &'m Map<String, Value>, b: &'m Map<String, Value>) -> Vec<&'m String> {
    let mut k: Vec<&String> = a.keys().chain(b.keys()).collect();
    k.sort();
    k.dedup();
    k
}

/// `top`: a field of the object itself (`spec`, `metadata`): never a member on its own,
/// as upstream's always-present Go structs are not.
fn diff(old: Option<&Value>, new: Option<&Value>, at: &At, c: &mut Comparison, top: bool) {
    let s = at.shape();
    let leaf = |v: Option<&Value>| v.is_none_or(|v| is_leaf(v, s));
    match (old, new) {
        (None, None) => {}
        (Some(o), Some(n)) if leaf(old) || leaf(new) || std::mem::discriminant(o) != std::mem::discriminant(n) => {
            if o != n {
                c.modified.insert(at.path.clone());
            }
        }
        (None, Some(_)) if leaf(new) => c.added.insert(at.path.clone()),
        (Some(_), None) if leaf(old) => c.removed.insert(at.path.clone()),
        _ => {
            if !top {
                match (old, new) {
                    (None, _) => c.added.insert(at.path.clone()),
                    (_, None) => c.removed.insert(at.path.clone()),
                    _ => {}
                }
            }
            diff_children(old, new, at, c);
        }
    }
}

fn diff_children(old: Option<&Value>, new: Option<&Value>, at: &At, c: &mut Comparison) {
    let s = at.shape();
    match old.or(new) {
        Some(Value::Object(_)) => {
            let empty = Map::new();
            let o = old.and_then(Value::as_object).unwrap_or(&empty);
            let n = new.and_then(Value::as_object).unwrap_or(&empty);
            for k in keys(o, n) {
                diff(o.get(k), n.get(k), &at.field(k), c, false);
            }
        }
        Some(Value::Array(_)) => {
            let o = items(old.and_then(Value::as_array).map_or(&[][..], |a| a), s);
            let n = items(new.and_then(Value::as_array).map_or(&[][..], |a| a), s);
            let mut all: Vec<&Element> = o.iter().chain(&n).map(|(e, _)| e).collect();
            all.sort();
            all.dedup();
            for e in all {
                let (ov, nv) = (find(&o, e), find(&n, e));
                let here = at.item(e.clone());
                match (ov, nv) {
                    (None, Some(_)) => c.added.insert(here.path.clone()),
                    (Some(_), None) => c.removed.insert(here.path.clone()),
                    _ => {}
                }
                let empty = Map::new();
                let (om, nm) = (ov.and_then(Value::as_object).unwrap_or(&empty), nv.and_then(Value::as_object).unwrap_or(&empty));
                if ov.is_some_and(|v| !v.is_object()) || nv.is_some_and(|v| !v.is_object()) {
                    continue; // set items are their value: nothing below them
                }
                for k in keys(om, nm) {
                    diff(om.get(k), nm.get(k), &here.field(k), c, false);
                }
            }
        }
        _ => {}
    }
}

fn find<'v>(l: &[(Element, &'v Value)], e: &Element) -> Option<&'v Value> {
    l.iter().find(|(x, _)| x == e).map(|(_, v)| *v)
}

/// Merge an applied configuration into the live object: the configuration wins, objects
/// merge field by field, keyed and set lists item by item (configuration order first,
/// then the live items it does not name), everything else is replaced.
pub fn merge(kind: &str, live: &Value, cfg: &Value) -> Value {
    merge_at(live, cfg, &At::root(kind))
}

fn merge_at(live: &Value, cfg: &Value, at: &At) -> Value {
    let s = at.shape();
    match (live, cfg) {
        (Value::Object(l), Value::Object(c)) if !at.path.is_empty() && s == Shape::Atomic => Value::Object(c.clone()),
        (Value::Object(l), Value::Object(c)) => {
            let mut out = l.clone();
            for (k, cv) in c {
                let merged = match l.get(k) {
                    Some(lv) => merge_at(lv, cv, &at.field(k)),
                    None => cv.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Array(l), Value::Array(c)) if matches!(s, Shape::Keyed(_) | Shape::Set) => {
            let (li, ci) = (items(l, s), items(c, s));
            let mut out: Vec<Value> = ci
                .iter()
                .map(|(e, cv)| match li.iter().find(|(x, _)| x == e) {
                    Some((_, lv)) => merge_at(lv, cv, &at.item(e.clone())),
                    None => (*cv).clone(),
                })
                .collect();
            out.extend(li.iter().filter(|(e, _)| !ci.iter().any(|(x, _)| x == e)).map(|(_, v)| (*v).clone()));
            Value::Array(out)
        }
        (_, c) => c.clone(),
    }
}

/// Remove the node at `path` from `v` (a field, or a list item by its element); then
/// remove the objects and lists left empty on the way, unless `keep` owns them.
pub fn remove(kind: &str, v: &mut Value, path: &Path, keep: &Set) {
    remove_at(v, path, &At::root(kind), keep);
}

/// Returns whether the node `v` is left empty.
fn remove_at(v: &mut Value, rest: &[Element], at: &At, keep: &Set) -> bool {
    let Some((first, tail)) = rest.split_first() else { return false };
    // A field of the object itself (`spec`) goes only when asked for, never for being empty.
    let may_drop_emptied = !at.path.is_empty();
    let owned = |p: &Path| keep.contains(p) || keep.has_descendant(p);
    let s = at.shape();
    match (v, first) {
        (Value::Object(m), Element::Field(k)) => {
            let child = at.field(k);
            let gone = tail.is_empty()
                || m.get_mut(k).is_some_and(|c| remove_at(c, tail, &child, keep) && may_drop_emptied && !owned(&child.path));
            if gone {
                m.remove(k);
            }
            m.is_empty()
        }
        (Value::Array(a), e) => {
            let Some(i) = a.iter().enumerate().position(|(i, item)| element_of(item, s, i) == *e) else { return false };
            let child = at.item(e.clone());
            let gone = tail.is_empty() || (remove_at(&mut a[i], tail, &child, keep) && !owned(&child.path));
            if gone {
                a.remove(i);
            }
            a.is_empty()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::fieldpath::render;
    use super::*;
    use serde_json::json;

    fn paths(s: &Set) -> Vec<String> {
        s.0.iter().map(render).collect()
    }

    #[test]
    fn fieldset_owns_leaves_and_keyed_items() {
        let svc =
            json!({"spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]}, "metadata": {"labels": {"a": "b"}}});
        assert_eq!(
            paths(&fieldset("Service", &svc)),
            [
                ".metadata.labels.a",
                ".spec.ports[port=80,protocol=\"TCP\"]",
                ".spec.ports[port=80,protocol=\"TCP\"].name",
                ".spec.ports[port=80,protocol=\"TCP\"].port",
                ".spec.selector"
            ]
        );
    }

    #[test]
    fn compare_sees_items_by_key() {
        let old = json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "a", "image": "v1"}, {"name": "b", "image": "x"}]}}}});
        let new = json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "b", "image": "x"}, {"name": "a", "image": "v2"}, {"name": "c", "image": "y"}]}}}});
        let c = compare("Deployment", &old, &new);
        let k = |n: &str| format!(".spec.template.spec.containers[name=\"{n}\"]");
        assert_eq!(paths(&c.modified), [format!("{}.image", k("a"))]);
        assert_eq!(paths(&c.added), [k("c"), format!("{}.image", k("c")), format!("{}.name", k("c"))]);
        assert!(c.removed.is_empty());
    }

    #[test]
    fn merge_keeps_live_items_and_replaces_atomics() {
        let live = json!({"spec": {"selector": {"app": "web", "tier": "x"}, "ports": [{"port": 80, "targetPort": 8080}, {"port": 443}], "clusterIP": "10.96.0.9"}});
        let cfg = json!({"spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 9090}]}});
        let m = merge("Service", &live, &cfg);
        assert_eq!(m["spec"]["selector"], json!({"app": "web"}));
        assert_eq!(m["spec"]["ports"], json!([{"port": 80, "targetPort": 9090}, {"port": 443}]));
        assert_eq!(m["spec"]["clusterIP"], "10.96.0.9");
    }

    #[test]
    fn remove_takes_a_list_item_and_empty_parents() {
        let mut v = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"ports": [{"port": 80}, {"port": 443, "name": "tls"}]}});
        let set = fieldset("Service", &json!({"spec": {"ports": [{"port": 443}]}}));
        let item = set.0.iter().find(|p| p.len() == 3).unwrap().clone();
        remove("Service", &mut v, &item, &Set::default());
        assert_eq!(v["spec"]["ports"], json!([{"port": 80}]));
        let label = vec![Element::Field("metadata".into()), Element::Field("labels".into()), Element::Field("a".into())];
        remove("Service", &mut v, &label, &Set::default());
        assert_eq!(v["metadata"], json!({}), "an emptied map goes, a field of the object itself stays");
    }
}
