//! What the watch cache holds for one kind: every object by key, the recent changes in
//! order (a ring), and the etcd revision all of it is current at. Pure: the dispatcher
//! feeds it, LISTs and WATCHes read it; no I/O, so it is tested without etcd.
//!
//! Objects are decoded once, when their change arrives, and each keeps its JSON encoding
//! once a reader has asked for it: a LIST of 10,000 pods writes bytes it already has
//! instead of decoding and encoding every object again, and a change seen by a hundred
//! watchers is decoded once, not a hundred times.
//!
//! Upstream: k8s.io/apiserver/pkg/storage/cacher/watch_cache.go

use axum::body::Bytes;
use pkg::api::Object;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, OnceLock};

/// One object as stored (with `resourceVersion` filled in), its JSON once asked for,
/// and the JSON watch-event lines that carry it.
pub struct Entry<T> {
    pub obj: T,
    json: OnceLock<Bytes>,
    /// `{"type":"ADDED","object":...}\n` and the MODIFIED and DELETED ones: made once and
    /// shared by every watcher (500 watchers each copying a 15 KB EndpointSlice into
    /// their buffers held gigabytes).
    lines: [OnceLock<Bytes>; 3],
}

impl<T: Object> Entry<T> {
    pub fn new(obj: T) -> Arc<Entry<T>> {
        Arc::new(Entry { obj, json: OnceLock::new(), lines: Default::default() })
    }

    /// The object as a JSON response carries it, encoded the first time it is asked for.
    pub fn json(&self) -> &Bytes {
        self.json.get_or_init(|| serde_json::to_vec(&self.obj).unwrap_or_default().into())
    }

    /// The JSON watch event of this object (`kind`: ADDED, MODIFIED, DELETED, else
    /// BOOKMARK-like kinds, made afresh), one line.
    pub fn event_line(&self, kind: &str) -> Bytes {
        let make = || {
            let json = self.json();
            let mut l = Vec::with_capacity(json.len() + 32);
            l.extend_from_slice(format!("{{\"type\":\"{kind}\",\"object\":").as_bytes());
            l.extend_from_slice(json);
            l.extend_from_slice(b"}\n");
            Bytes::from(l)
        };
        match kind {
            "ADDED" => self.lines[0].get_or_init(make).clone(),
            "MODIFIED" => self.lines[1].get_or_init(make).clone(),
            "DELETED" => self.lines[2].get_or_init(make).clone(),
            _ => make(),
        }
    }
}

/// One change, in the order etcd made it.
pub struct Event<T> {
    pub key: String,
    pub revision: i64,
    /// The object after the change; `None` for a delete.
    pub new: Option<Arc<Entry<T>>>,
    /// The object before it, if it existed; for a delete its `resourceVersion` is the
    /// delete's revision, so a client that saw it can resume from there.
    pub prev: Option<Arc<Entry<T>>>,
    /// The object before it exactly as it was stored (for a delete, `prev` is a copy with
    /// another `resourceVersion`): what a page read at an earlier revision shows.
    stored: Option<Arc<Entry<T>>>,
}

/// One page of a paginated LIST ([`Snapshot::page_at`]).
pub struct Page<T> {
    pub items: Vec<Arc<Entry<T>>>,
    /// The key of the last item, when objects come after it.
    pub last: Option<String>,
    /// How many objects (matching or not) come after it.
    pub remaining: usize,
}

/// The objects, the ring of recent events and the revision.
pub struct Snapshot<T> {
    objects: BTreeMap<String, Arc<Entry<T>>>,
    ring: VecDeque<Arc<Event<T>>>,
    capacity: usize,
    /// Every event after this revision is in the ring.
    ring_from: i64,
    /// The revision the objects are current at (0: not loaded yet).
    revision: i64,
}

impl<T: Object> Snapshot<T> {
    /// An empty cache that keeps the last `capacity` events.
    pub fn new(capacity: usize) -> Snapshot<T> {
        Snapshot { objects: BTreeMap::new(), ring: VecDeque::new(), capacity: capacity.max(1), ring_from: 0, revision: 0 }
    }

    /// Start over from a full read at `revision`: the ring is emptied, so a watch from an
    /// earlier revision is no longer served from here.
    pub fn replace(&mut self, objects: Vec<(String, T)>, revision: i64) {
        self.objects = objects.into_iter().map(|(k, o)| (k, Entry::new(o))).collect();
        self.ring.clear();
        self.ring_from = revision;
        self.revision = revision;
    }

    /// Apply one change (`new: None` deletes) made at `revision`, and return it as an event.
    pub fn apply(&mut self, key: &str, new: Option<T>, revision: i64) -> Arc<Event<T>> {
        let new = new.map(Entry::new);
        let stored = match &new {
            Some(e) => self.objects.insert(key.to_string(), e.clone()),
            None => self.objects.remove(key),
        };
        let prev = match (&new, &stored) {
            (None, Some(p)) => {
                let mut gone = p.obj.clone();
                gone.meta_mut().resource_version = Some(revision.to_string());
                Some(Entry::new(gone))
            }
            _ => stored.clone(),
        };
        let ev = Arc::new(Event { key: key.to_string(), revision, new, prev, stored });
        if self.ring.len() == self.capacity {
            if let Some(old) = self.ring.pop_front() {
                self.ring_from = old.revision;
            }
        }
        self.ring.push_back(ev.clone());
        self.revision = self.revision.max(revision);
        ev
    }

    /// Nothing of this kind changed up to `revision` (other kinds did).
    pub fn progress(&mut self, revision: i64) {
        self.revision = self.revision.max(revision);
    }

    pub fn revision(&self) -> i64 {
        self.revision
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// The objects whose keys start with `prefix`, in key order.
    pub fn list(&self, prefix: &str) -> Vec<Arc<Entry<T>>> {
        self.objects.range(prefix.to_string()..).take_while(|(k, _)| k.starts_with(prefix)).map(|(_, e)| e.clone()).collect()
    }

    /// A page of the objects under `prefix` as they were at `revision`: those `keep`
    /// accepts, from the key `from` on, at most `limit`. The objects now, with every
    /// change the ring holds after `revision` undone (a key's first change after it says
    /// what the key held then), so the pages of one LIST show one snapshot however the
    /// objects change between them, as pages read from etcd at one revision do. `None`
    /// when the ring no longer reaches back to `revision`, or the cache has not reached it.
    pub fn page_at(&self, prefix: &str, from: &str, revision: i64, limit: usize, keep: impl Fn(&T) -> bool) -> Option<Page<T>> {
        if revision < self.ring_from || revision > self.revision {
            return None;
        }
        let in_range = |k: &str| k >= from && k.starts_with(prefix);
        let mut then: BTreeMap<&str, Option<&Arc<Entry<T>>>> = BTreeMap::new();
        let after = self.ring.partition_point(|e| e.revision <= revision);
        for e in self.ring.range(after..).filter(|e| in_range(&e.key)) {
            then.entry(e.key.as_str()).or_insert(e.stored.as_ref());
        }
        let now = self
            .objects
            .range::<str, _>((std::ops::Bound::Included(from), std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix));
        let mut view = merge(now.map(|(k, e)| (k.as_str(), Some(e))), then.into_iter());
        let mut page = Page { items: vec![], last: None, remaining: 0 };
        for (key, entry) in view.by_ref() {
            if page.items.len() == limit {
                page.remaining = 1 + view.count();
                return Some(page);
            }
            if keep(&entry.obj) {
                page.items.push(entry.clone());
            }
            page.last = Some(key.to_string());
        }
        page.last = None;
        Some(page)
    }

    /// The events at `from` and after, or `None` when the ring no longer reaches back
    /// that far (the caller then watches etcd itself, or answers 410).
    pub fn since(&self, from: i64) -> Option<Vec<Arc<Event<T>>>> {
        if from <= self.ring_from {
            return None;
        }
        let start = self.ring.partition_point(|e| e.revision < from);
        Some(self.ring.range(start..).cloned().collect())
    }
}

/// Two key-ordered views of the same keys merged: `then` (what a key held at an earlier
/// revision, `None`: nothing) wins over `now`; keys holding nothing are left out.
fn merge<'a, T: 'a>(
    now: impl Iterator<Item = (&'a str, Option<&'a Arc<Entry<T>>>)>,
    then: impl Iterator<Item = (&'a str, Option<&'a Arc<Entry<T>>>)>,
) -> impl Iterator<Item = (&'a str, &'a Arc<Entry<T>>)> {
    let (mut now, mut then) = (now.peekable(), then.peekable());
    std::iter::from_fn(move || loop {
        let next = match (now.peek(), then.peek()) {
            (None, None) => return None,
            (Some(_), None) => now.next(),
            (None, Some(_)) => then.next(),
            (Some(a), Some(b)) if a.0 < b.0 => now.next(),
            (Some(a), Some(b)) if a.0 > b.0 => then.next(),
            (Some(_), Some(_)) => {
                now.next();
                then.next()
            }
        };
        if let Some((k, Some(e))) = next {
            return Some((k, e));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pkg::api::ConfigMap;

    fn cm(name: &str, v: &str, rv: i64) -> ConfigMap {
        let mut c = ConfigMap { metadata: pkg::api::meta(Some("default"), name), ..Default::default() };
        c.data = Some([("v".to_string(), v.to_string())].into());
        c.metadata.resource_version = Some(rv.to_string());
        c
    }

    #[test]
    fn changes_are_applied_in_order_and_listed_by_prefix() {
        let mut s = Snapshot::new(10);
        s.replace(vec![("/c/default/a".into(), cm("a", "1", 5)), ("/c/other/a".into(), cm("a", "x", 4))], 5);
        let ev = s.apply("/c/default/b", Some(cm("b", "1", 6)), 6);
        assert!(ev.prev.is_none());
        let ev = s.apply("/c/default/a", Some(cm("a", "2", 7)), 7);
        assert_eq!(ev.prev.as_ref().unwrap().obj.data.as_ref().unwrap()["v"], "1");
        let names = |p: &str| s.list(p).iter().map(|e| e.obj.metadata.name.clone().unwrap()).collect::<Vec<_>>();
        assert_eq!(names("/c/default/"), ["a", "b"]);
        assert_eq!(names("/c/"), ["a", "b", "a"]);
        assert_eq!(s.revision(), 7);
        s.progress(9);
        assert_eq!(s.revision(), 9);
    }

    #[test]
    fn a_delete_carries_the_object_at_the_delete_revision() {
        let mut s = Snapshot::new(10);
        s.replace(vec![("/c/default/a".into(), cm("a", "1", 3))], 3);
        let ev = s.apply("/c/default/a", None, 8);
        assert!(ev.new.is_none());
        assert_eq!(ev.prev.as_ref().unwrap().obj.metadata.resource_version.as_deref(), Some("8"));
        assert!(s.is_empty());
        assert!(s.apply("/c/default/never", None, 9).prev.is_none(), "deleting what is not there is a no-op event");
    }

    #[test]
    fn the_ring_serves_recent_revisions_only() {
        let mut s: Snapshot<ConfigMap> = Snapshot::new(3);
        s.replace(vec![], 10);
        assert_eq!(s.since(11).unwrap().len(), 0, "nothing yet after the list");
        assert!(s.since(10).is_none(), "the list's own revision is before the ring");
        for rev in 11..=15 {
            s.apply(&format!("/c/default/{rev}"), Some(cm(&rev.to_string(), "v", rev)), rev);
        }
        let revs = |v: Option<Vec<Arc<Event<ConfigMap>>>>| v.map(|v| v.iter().map(|e| e.revision).collect::<Vec<_>>());
        assert_eq!(revs(s.since(13)), Some(vec![13, 14, 15]));
        assert_eq!(revs(s.since(15)), Some(vec![15]));
        assert_eq!(revs(s.since(16)), Some(vec![]));
        assert_eq!(revs(s.since(12)), None, "12 was pushed out");
    }

    #[test]
    fn json_is_encoded_once_and_matches_serde() {
        let e = Entry::new(cm("a", "1", 3));
        assert_eq!(&e.json()[..], &serde_json::to_vec(&e.obj).unwrap()[..]);
        assert!(std::ptr::eq(e.json(), e.json()));
    }

    /// Every page read at an earlier revision, with changes made in between, shows the
    /// objects exactly as they were at that revision (compared with a record of each state).
    #[test]
    fn pages_at_a_revision_show_that_revision_whatever_changed_since() {
        let mut s = Snapshot::new(1_000);
        s.replace(vec![], 1);
        let mut history: Vec<(i64, BTreeMap<String, String>)> = vec![(1, BTreeMap::new())];
        let mut state: BTreeMap<String, String> = BTreeMap::new();
        let mut seed: u64 = 7;
        let mut rand = |n: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for rev in 2..300 {
            let (ns, name) = (["default", "other"][rand(2) as usize], format!("c{}", rand(20)));
            let key = format!("/c/{ns}/{name}");
            if rand(4) == 0 {
                s.apply(&key, None, rev);
                state.remove(&key);
            } else {
                let v = format!("v{rev}");
                s.apply(&key, Some(cm(&name, &v, rev)), rev);
                state.insert(key, v);
            }
            history.push((rev, state.clone()));
        }
        for (rev, then) in history.iter().step_by(7) {
            for (prefix, limit) in [("/c/", 3), ("/c/default/", 4), ("/c/", 1_000)] {
                let want: Vec<&String> = then.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| v).collect();
                let (mut got, mut from) = (vec![], prefix.to_string());
                loop {
                    let page = s.page_at(prefix, &from, *rev, limit, |_| true).expect("the ring reaches back");
                    assert!(page.items.len() <= limit);
                    got.extend(page.items.iter().map(|e| e.obj.data.as_ref().unwrap()["v"].clone()));
                    match page.last {
                        Some(last) => {
                            assert_eq!(page.remaining, want.len() - got.len(), "remaining at {rev}");
                            from = format!("{last}\0");
                        }
                        None => break,
                    }
                }
                assert_eq!(got.iter().collect::<Vec<_>>(), want, "pages of {prefix} at revision {rev}");
            }
        }
        // Selectors filter a page; a revision the ring does not reach is for etcd to read.
        let page = s.page_at("/c/", "/c/", 150, 2, |c: &ConfigMap| c.metadata.namespace.as_deref() == Some("other")).unwrap();
        assert!(page.items.iter().all(|e| e.obj.metadata.namespace.as_deref() == Some("other")));
        let mut small = Snapshot::<ConfigMap>::new(2);
        small.replace(vec![], 1);
        for rev in 2..6 {
            small.apply("/c/default/a", Some(cm("a", "x", rev)), rev);
        }
        assert!(small.page_at("/c/", "/c/", 2, 10, |_| true).is_none(), "events after 2 have left the ring");
        assert!(small.page_at("/c/", "/c/", 4, 10, |_| true).is_some());
        assert!(small.page_at("/c/", "/c/", 9, 10, |_| true).is_none(), "the cache has not reached 9");
    }
}
