//! Field paths and sets of them: how managedFields says which fields a manager owns.
//!
//! A path is a list of elements: a field name (`f:spec`), a list item picked by its key
//! fields (`k:{"name":"web"}`), a list item picked by its value (`v:"finalizer"`), or an
//! index (`i:3`, for lists without keys). A set of paths is written as a trie of JSON
//! objects (`fieldsV1`), where `"."` marks a node that is itself in the set and has
//! children. The same paths print as `.spec.containers[name="web"].image` in conflicts.
//!
//! Upstream: sigs.k8s.io/structured-merge-diff/v4/fieldpath (element.go, serialize.go, path.go)

use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// One step of a path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Element {
    /// A field of an object (or a key of a map such as `labels`).
    Field(String),
    /// An item of a keyed list: its key fields and their values as compact JSON, sorted by field.
    Key(Vec<(String, String)>),
    /// An item of a set list, by its value as compact JSON.
    Value(String),
    /// An item of a list without keys, by position.
    Index(usize),
}

pub type Path = Vec<Element>;

/// A set of paths. Every path in it is a member; its ancestors are not, unless also in it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Set(pub BTreeSet<Path>);

impl Set {
    pub fn insert(&mut self, p: Path) {
        self.0.insert(p);
    }
    pub fn contains(&self, p: &Path) -> bool {
        self.0.contains(p)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn union(&self, o: &Set) -> Set {
        Set(self.0.union(&o.0).cloned().collect())
    }
    pub fn minus(&self, o: &Set) -> Set {
        Set(self.0.difference(&o.0).cloned().collect())
    }
    pub fn intersect(&self, o: &Set) -> Set {
        Set(self.0.intersection(&o.0).cloned().collect())
    }
    /// Whether some member lies strictly below `p`.
    pub fn has_descendant(&self, p: &Path) -> bool {
        self.0.range(p.clone()..).skip_while(|q| *q == p).take_while(|q| q.starts_with(p)).next().is_some()
    }
    /// Drop every path that starts with `prefix` (a whole subtree, e.g. `status`).
    pub fn without_prefix(&self, prefix: &Path) -> Set {
        Set(self.0.iter().filter(|p| !p.starts_with(prefix)).cloned().collect())
    }
}

fn element_key(e: &Element) -> String {
    match e {
        Element::Field(f) => format!("f:{f}"),
        Element::Key(kv) => {
            let body: Vec<String> = kv.iter().map(|(k, v)| format!("{}:{v}", Value::String(k.clone()))).collect();
            format!("k:{{{}}}", body.join(","))
        }
        Element::Value(v) => format!("v:{v}"),
        Element::Index(i) => format!("i:{i}"),
    }
}

fn parse_element(s: &str) -> Option<Element> {
    let (kind, rest) = s.split_once(':')?;
    Some(match kind {
        "f" => Element::Field(rest.to_string()),
        "v" => Element::Value(serde_json::from_str::<Value>(rest).ok()?.to_string()),
        "i" => Element::Index(rest.parse().ok()?),
        "k" => {
            let Value::Object(m) = serde_json::from_str::<Value>(rest).ok()? else { return None };
            Element::Key(m.into_iter().map(|(k, v)| (k, v.to_string())).collect())
        }
        _ => return None,
    })
}

impl Set {
    /// The `fieldsV1` trie of this set.
    pub fn to_fields_v1(&self) -> Value {
        let mut root = Map::new();
        for path in &self.0 {
            let mut node = &mut root;
            for e in path {
                node = node
                    .entry(element_key(e))
                    .or_insert_with(|| Value::Object(Map::new()))
                    .as_object_mut()
                    .expect("trie nodes are objects");
            }
            // A member with children says so with "."; one without is just `{}`.
            node.insert(".".into(), Value::Object(Map::new()));
        }
        tidy(&mut root);
        Value::Object(root)
    }

    /// Read a `fieldsV1` trie; entries it cannot read are skipped.
    pub fn from_fields_v1(v: &Value) -> Set {
        let mut set = Set::default();
        if let Value::Object(m) = v {
            walk(m, &mut vec![], &mut set);
        }
        set
    }
}

/// `{".": {}}` alone becomes `{}`: a member without children.
fn tidy(m: &mut Map<String, Value>) {
    for (_, v) in m.iter_mut() {
        if let Value::Object(child) = v {
            tidy(child);
            if child.len() == 1 && child.contains_key(".") {
                child.clear();
            }
        }
    }
}

fn walk(m: &Map<String, Value>, at: &mut Path, out: &mut Set) {
    for (k, v) in m {
        if k == "." {
            out.insert(at.clone());
            continue;
        }
        let Some(e) = parse_element(k) else { continue };
        at.push(e);
        match v {
            Value::Object(child) if !child.is_empty() => walk(child, at, out),
            _ => out.insert(at.clone()),
        }
        at.pop();
    }
}

/// A path as conflicts print it: `.spec.ports[port=80,protocol="TCP"].targetPort`.
pub fn render(p: &Path) -> String {
    let mut s = String::new();
    for e in p {
        match e {
            Element::Field(f) => {
                s.push('.');
                s.push_str(f);
            }
            Element::Key(kv) => {
                let parts: Vec<String> = kv.iter().map(|(k, v)| format!("{k}={v}")).collect();
                s.push_str(&format!("[{}]", parts.join(",")));
            }
            Element::Value(v) => s.push_str(&format!("[={v}]")),
            Element::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(s: &str) -> Element {
        Element::Field(s.into())
    }

    #[test]
    fn sets_round_trip_through_fields_v1() {
        let fields = json!({"f:metadata": {"f:labels": {"f:app": {}}},
            "f:spec": {"f:ports": {"k:{\"port\":80,\"protocol\":\"TCP\"}": {".": {}, "f:port": {}, "f:targetPort": {}}},
                       "f:selector": {}}});
        let set = Set::from_fields_v1(&fields);
        let item = vec![f("spec"), f("ports"), Element::Key(vec![("port".into(), "80".into()), ("protocol".into(), "\"TCP\"".into())])];
        assert!(set.contains(&item) && set.contains(&[&item[..], &[f("targetPort")]].concat()));
        assert!(set.contains(&vec![f("spec"), f("selector")]) && !set.contains(&vec![f("spec")]));
        assert_eq!(set.to_fields_v1(), fields);
        assert_eq!(render(&[&item[..], &[f("port")]].concat()), ".spec.ports[port=80,protocol=\"TCP\"].port");
        assert!(set.has_descendant(&vec![f("spec")]) && !set.has_descendant(&vec![f("spec"), f("selector")]));
    }
}
