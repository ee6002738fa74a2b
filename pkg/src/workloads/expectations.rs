//! A controller acts on a *cache* of the cluster (its informers' stores), and its own
//! writes reach that cache a little later, through the watch. Without care, a ReplicaSet
//! that just created 3 pods would look again a millisecond later, see none of them yet,
//! and create 3 more. So a controller remembers what it expects to see — each object it
//! wrote, at the resourceVersion the write returned (or gone, for a delete) — and does not
//! act on that owner again until its cache has caught up, or a timeout says the watch
//! event was missed.
//!
//! Upstream: pkg/controller/controller_utils.go (ControllerExpectations, UIDTrackingControllerExpectations)

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long an expectation may stay unmet before it is given up (a lost watch event
/// must not stall a controller for ever). A controller whose informer is behind must
/// wait for it, not act on a stale cache: with 10 s, a controller-manager busy with
/// 15,000 pods made a ReplicaSet of 50 pods 327 of them. Kubernetes waits 5 minutes, but
/// also counts a pod deleted before its creation was seen; this one does not, so it waits
/// one minute.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// One write the cache should show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expect {
    pub uid: String,
    /// The resourceVersion the write returned: the cache must be at least there.
    pub resource_version: i64,
    /// A delete: the object may also simply be gone.
    pub gone_ok: bool,
}

/// What the cache holds for a uid: its resourceVersion, or nothing.
pub type Seen<'a> = &'a dyn Fn(&str) -> Option<i64>;

/// Per owner (a ReplicaSet's or Deployment's uid), what its last pass wrote.
#[derive(Debug, Default)]
pub struct Expectations {
    pending: HashMap<String, (Instant, Vec<Expect>)>,
}

impl Expectations {
    /// Remember the writes of one pass over `owner` (replacing any older ones).
    pub fn expect(&mut self, owner: &str, writes: Vec<Expect>, now: Instant) {
        if writes.is_empty() {
            self.pending.remove(owner);
        } else {
            self.pending.insert(owner.to_string(), (now, writes));
        }
    }

    /// Whether the cache shows everything `owner`'s last pass wrote (or it timed out).
    /// Met expectations are forgotten.
    pub fn satisfied(&mut self, owner: &str, seen: Seen<'_>, now: Instant) -> bool {
        let Some((since, writes)) = self.pending.get_mut(owner) else { return true };
        writes.retain(|w| match seen(&w.uid) {
            Some(rv) => rv < w.resource_version,
            None => !w.gone_ok,
        });
        if writes.is_empty() || now.duration_since(*since) >= TIMEOUT {
            self.pending.remove(owner);
            return true;
        }
        false
    }

    /// The owner is gone: nothing more to wait for.
    pub fn forget(&mut self, owner: &str) {
        self.pending.remove(owner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_waits_for_its_own_writes() {
        let mut e = Expectations::default();
        let t0 = Instant::now();
        let create = Expect { uid: "p1".into(), resource_version: 10, gone_ok: false };
        let delete = Expect { uid: "p2".into(), resource_version: 11, gone_ok: true };
        e.expect("rs", vec![create, delete], t0);
        assert!(!e.satisfied("rs", &|uid| (uid == "p2").then_some(9), t0), "the created pod is not in the cache yet");
        assert!(!e.satisfied("rs", &|uid| (uid == "p1").then_some(10).or(Some(9)), t0), "the deleted one is still at its old version");
        assert!(e.satisfied("rs", &|uid| (uid == "p1").then_some(12), t0), "created one seen, deleted one gone");
        assert!(e.satisfied("rs", &|_| None, t0), "met expectations are forgotten");
        e.expect("rs", vec![Expect { uid: "p3".into(), resource_version: 20, gone_ok: false }], t0);
        assert!(e.satisfied("rs", &|_| None, t0 + TIMEOUT), "a lost event does not stall the owner for ever");
        assert!(e.satisfied("other", &|_| None, t0));
    }
}
