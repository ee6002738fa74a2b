//! Back-off, as client-go's `flowcontrol.Backoff`: per key (a container, or an image of a
//! pod), the wait doubles from 10 s to at most 5 min each time; a key left alone for
//! twice the maximum (10 min: the container ran that long) starts again at 10 s. The
//! first crash restarts at once; the waits after are 10 s, 20 s, 40 s, ... 5 min, shown
//! as `CrashLoopBackOff` meanwhile.
//!
//! Upstream: k8s.io/client-go/util/flowcontrol/backoff.go, pkg/kubelet/kuberuntime/kuberuntime_manager.go (doBackOff)

use std::collections::HashMap;
use std::time::{Duration, Instant};

pub const INITIAL: Duration = Duration::from_secs(10);
pub const MAX: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug)]
struct Entry {
    backoff: Duration,
    last_update: Instant,
}

#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    entries: HashMap<String, Entry>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(INITIAL, MAX)
    }
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff { initial, max, entries: HashMap::new() }
    }

    fn expired(&self, e: &Entry, at: Instant) -> bool {
        at.saturating_duration_since(e.last_update) > self.max * 2
    }

    /// A restart (or pull) happens now: the next wait grows.
    pub fn next(&mut self, key: &str, now: Instant) {
        let backoff = match self.entries.get(key) {
            Some(e) if !self.expired(e, now) => (e.backoff * 2).min(self.max),
            _ => self.initial,
        };
        self.entries.insert(key.to_string(), Entry { backoff, last_update: now });
    }

    /// Still waiting after something that happened at `since` (a container's exit)?
    pub fn in_backoff_since(&self, key: &str, since: Instant, now: Instant) -> bool {
        match self.entries.get(key) {
            Some(e) if !self.expired(e, since) => now.saturating_duration_since(since) < e.backoff,
            _ => false,
        }
    }

    /// Still waiting since the last [`Backoff::next`] (image pulls)?
    pub fn in_backoff_since_update(&self, key: &str, now: Instant) -> bool {
        self.entries.get(key).is_some_and(|e| now.saturating_duration_since(e.last_update) < e.backoff)
    }

    /// The current wait for a key (zero if none).
    pub fn get(&self, key: &str) -> Duration {
        self.entries.get(key).map_or(Duration::ZERO, |e| e.backoff)
    }

    /// When a key's wait since `since` ends.
    pub fn until(&self, key: &str, since: Instant) -> Option<Instant> {
        self.entries.get(key).map(|e| since + e.backoff)
    }

    pub fn forget(&mut self, prefix: &str) {
        self.entries.retain(|k, _| !k.starts_with(prefix));
    }
}

/// Go's duration text, as kubelet messages print it: `10s`, `1m20s`, `5m0s`.
pub fn go_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        return format!("{s}s");
    }
    if s < 3600 {
        return format!("{}m{}s", s / 60, s % 60);
    }
    format!("{}h{}m{}s", s / 3600, (s % 3600) / 60, s % 60)
}

/// The `CrashLoopBackOff` waiting message.
pub fn crashloop_message(wait: Duration, container: &str, pod: &str, ns: &str, uid: &str) -> String {
    format!("back-off {} restarting failed container={container} pod={pod}_{ns}({uid})", go_duration(wait))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_five_minutes_and_resets_after_ten() {
        let mut b = Backoff::default();
        let t0 = Instant::now();
        assert!(!b.in_backoff_since("c", t0, t0), "the first crash restarts at once");
        let mut t = t0;
        let mut waits = vec![];
        for _ in 0..7 {
            b.next("c", t);
            waits.push(b.get("c").as_secs());
            assert!(b.in_backoff_since("c", t, t + Duration::from_secs(5)));
            t += b.get("c");
        }
        assert_eq!(waits, [10, 20, 40, 80, 160, 300, 300]);
        b.next("c", t + Duration::from_secs(601));
        assert_eq!(b.get("c").as_secs(), 10, "a container that ran 10 min starts over");
        assert_eq!(go_duration(Duration::from_secs(80)), "1m20s");
        assert_eq!(go_duration(Duration::from_secs(300)), "5m0s");
        assert_eq!(
            crashloop_message(Duration::from_secs(10), "app", "web", "default", "u1"),
            "back-off 10s restarting failed container=app pod=web_default(u1)"
        );
    }
}
