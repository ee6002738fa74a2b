//! The garbage collector's decision for one object with `ownerReferences`: an object
//! whose owners are all gone is deleted (what `kubectl delete deployment` relies on to
//! take the ReplicaSets and pods with it); one whose owner is being deleted in the
//! foreground (`foregroundDeletion` finalizer) is deleted first; one whose owner is
//! orphaning its dependents (`orphan` finalizer) loses that owner reference and stays.
//!
//! The collector keeps a [`Graph`] of every object's owner references (from metadata-only
//! watches on every served resource); each change marks the objects it may concern, and
//! each marked object is looked at once: [`decide`] for its own owners, and
//! [`Graph::finalizer_work`] if it is itself being deleted in the foreground or
//! orphaning.
//!
//! Upstream: pkg/controller/garbagecollector/garbagecollector.go (attemptToDeleteItem,
//! processDeletingDependentsItem, orphanDependents), graph.go

use crate::api::OwnerReference;
use std::collections::{BTreeSet, HashMap};

pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";

/// What an owner reference points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// No object with that uid (deleted, or recreated under the same name).
    Absent,
    Present,
    /// Being deleted, dependents first.
    DeletingForeground,
    /// Being deleted, dependents kept.
    Orphaning,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    Delete,
    /// Remove these owner references (by uid).
    Release(Vec<String>),
}

pub fn decide(owners: &[OwnerReference], state: &dyn Fn(&OwnerReference) -> Owner) -> Verdict {
    if owners.is_empty() {
        return Verdict::Keep;
    }
    let states: Vec<(String, Owner)> = owners.iter().map(|o| (o.uid.clone(), state(o))).collect();
    let orphaning: Vec<String> = states.iter().filter(|(_, s)| *s == Owner::Orphaning).map(|(u, _)| u.clone()).collect();
    if !orphaning.is_empty() {
        return Verdict::Release(orphaning);
    }
    if states.iter().any(|(_, s)| *s == Owner::DeletingForeground) || states.iter().all(|(_, s)| *s == Owner::Absent) {
        return Verdict::Delete;
    }
    Verdict::Keep
}

/// What the graph knows of one object.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Item {
    pub uid: String,
    pub owners: Vec<OwnerReference>,
    pub deleting: bool,
    pub finalizers: Vec<String>,
}

impl Item {
    fn has(&self, finalizer: &str) -> bool {
        self.deleting && self.finalizers.iter().any(|f| f == finalizer)
    }
}

/// Owners and dependents, by uid.
#[derive(Debug, Default)]
pub struct Graph {
    items: HashMap<String, Item>,
    dependents: HashMap<String, BTreeSet<String>>,
}

/// What the collector must do for an object being deleted with a GC finalizer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinalizerWork {
    /// `orphan`: take it out of these dependents' owners; none left: remove the finalizer.
    Orphan { release: Vec<String> },
    /// `foregroundDeletion`: delete these dependents (not yet being deleted);
    /// `blocking`: how many with `blockOwnerDeletion` remain (none: remove the finalizer).
    Foreground { delete: Vec<String>, blocking: usize },
}

impl Graph {
    pub fn get(&self, uid: &str) -> Option<&Item> {
        self.items.get(uid)
    }

    pub fn dependents(&self, uid: &str) -> Vec<String> {
        self.dependents.get(uid).map(|d| d.iter().cloned().collect()).unwrap_or_default()
    }

    /// Add or update an object; returns the uids to look at: the object itself, its
    /// owners (one may be waiting for it) and, if it is being deleted, its dependents.
    pub fn upsert(&mut self, item: Item) -> Vec<String> {
        if let Some(old) = self.items.get(&item.uid) {
            for o in &old.owners {
                if let Some(d) = self.dependents.get_mut(&o.uid) {
                    d.remove(&item.uid);
                }
            }
        }
        for o in &item.owners {
            self.dependents.entry(o.uid.clone()).or_default().insert(item.uid.clone());
        }
        let mut dirty: Vec<String> = vec![item.uid.clone()];
        dirty.extend(item.owners.iter().map(|o| o.uid.clone()));
        if item.deleting {
            dirty.extend(self.dependents(&item.uid));
        }
        self.items.insert(item.uid.clone(), item);
        dirty
    }

    /// An object is gone; returns its dependents and its owners to look at.
    pub fn remove(&mut self, uid: &str) -> Vec<String> {
        let mut dirty = self.dependents(uid);
        if let Some(old) = self.items.remove(uid) {
            for o in &old.owners {
                if let Some(d) = self.dependents.get_mut(&o.uid) {
                    d.remove(uid);
                }
                dirty.push(o.uid.clone());
            }
        }
        dirty
    }

    /// The state of an owner the graph knows; `None`: not in the graph (gone, or not
    /// seen yet — the collector asks the apiserver before believing it gone).
    pub fn owner_state(&self, r: &OwnerReference) -> Option<Owner> {
        let o = self.items.get(&r.uid)?;
        Some(if o.has(FOREGROUND) {
            Owner::DeletingForeground
        } else if o.has(ORPHAN) {
            Owner::Orphaning
        } else {
            Owner::Present
        })
    }

    pub fn finalizer_work(&self, uid: &str) -> Option<FinalizerWork> {
        let item = self.items.get(uid)?;
        let deps: Vec<&Item> = self.dependents(uid).iter().filter_map(|d| self.items.get(d)).collect();
        if item.has(ORPHAN) {
            return Some(FinalizerWork::Orphan { release: deps.iter().map(|d| d.uid.clone()).collect() });
        }
        if item.has(FOREGROUND) {
            let delete = deps.iter().filter(|d| !d.deleting).map(|d| d.uid.clone()).collect();
            let blocking = deps.iter().filter(|d| d.owners.iter().any(|o| o.uid == uid && o.block_owner_deletion == Some(true))).count();
            return Some(FinalizerWork::Foreground { delete, blocking });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(uid: &str) -> OwnerReference {
        OwnerReference { uid: uid.into(), ..Default::default() }
    }

    #[test]
    fn dependents_follow_their_owners() {
        let all = |s: Owner| move |_: &OwnerReference| s;
        assert_eq!(decide(&[r("a")], &all(Owner::Absent)), Verdict::Delete);
        assert_eq!(decide(&[r("a")], &all(Owner::Present)), Verdict::Keep);
        assert_eq!(decide(&[r("a")], &all(Owner::DeletingForeground)), Verdict::Delete);
        assert_eq!(decide(&[r("a")], &all(Owner::Orphaning)), Verdict::Release(vec!["a".into()]));
        let mixed = |o: &OwnerReference| if o.uid == "a" { Owner::Absent } else { Owner::Present };
        assert_eq!(decide(&[r("a"), r("b")], &mixed), Verdict::Keep, "one owner left keeps it");
        assert_eq!(decide(&[], &all(Owner::Absent)), Verdict::Keep);
    }

    fn item(uid: &str, owners: &[&str], deleting: bool, finalizers: &[&str]) -> Item {
        let owners =
            owners.iter().map(|o| OwnerReference { uid: o.to_string(), block_owner_deletion: Some(true), ..Default::default() }).collect();
        Item { uid: uid.into(), owners, deleting, finalizers: finalizers.iter().map(|f| f.to_string()).collect() }
    }

    #[test]
    fn the_graph_finds_what_each_change_concerns() {
        let mut g = Graph::default();
        g.upsert(item("deploy", &[], false, &[]));
        g.upsert(item("rs", &["deploy"], false, &[]));
        assert_eq!(g.upsert(item("pod", &["rs"], false, &[])), ["pod", "rs"]);
        assert_eq!(g.owner_state(&r("rs")), Some(Owner::Present));
        assert_eq!(g.owner_state(&r("nope")), None);
        // Foreground: the ReplicaSet is marked; its pod is to be deleted, and blocks it.
        let dirty = g.upsert(item("rs", &["deploy"], true, &[FOREGROUND]));
        assert!(dirty.contains(&"pod".to_string()));
        assert_eq!(g.owner_state(&r("rs")), Some(Owner::DeletingForeground));
        assert_eq!(g.finalizer_work("rs"), Some(FinalizerWork::Foreground { delete: vec!["pod".into()], blocking: 1 }));
        g.upsert(item("pod", &["rs"], true, &[]));
        assert_eq!(g.finalizer_work("rs"), Some(FinalizerWork::Foreground { delete: vec![], blocking: 1 }), "terminating, still there");
        assert_eq!(g.remove("pod"), ["rs"], "the owner waiting for it is looked at again");
        assert_eq!(g.finalizer_work("rs"), Some(FinalizerWork::Foreground { delete: vec![], blocking: 0 }));
        // Orphan: the Deployment lets its ReplicaSet go.
        g.upsert(item("deploy", &[], true, &[ORPHAN]));
        assert_eq!(g.finalizer_work("deploy"), Some(FinalizerWork::Orphan { release: vec!["rs".into()] }));
        assert_eq!(g.finalizer_work("pod"), None);
    }
}
